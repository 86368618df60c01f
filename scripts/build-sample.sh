#!/usr/bin/env bash
# Builds the sample web application flist a devnet publishes for examples/vm.yaml: a root file
# system of busybox-static (Debian's package, installed by scripts/install-deps.sh) whose
# /start.sh writes an index page and serves it with busybox httpd on port 80.
#
#   <out>/root/            the root file system
#   <out>/root/start.sh    the entrypoint (examples/vm.yaml names it)
#
# Usage: scripts/build-sample.sh [options] [out-dir]   (default: ${CARGO_TARGET_DIR:-target}/sample)
#   --flist FILE     also pack the root into the flist FILE with `zos flist pack --hub` (signed as
#                    your twin; ZOS_GRID and your key as for `zos`)
#   --push NAME      then publish FILE on the hub as NAME (`zos flist push`)
#
# The root is cached: when busybox and this script did not change, nothing is rebuilt. Prints
# the output directory on its last line.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
flist="" push=""
while [[ ${1:-} == --* ]]; do
  case $1 in
    --flist) flist=${2:?--flist needs a file}; shift 2 ;;
    --push) push=${2:?--push needs a name}; shift 2 ;;
    *) echo "build-sample: unknown option $1" >&2; exit 2 ;;
  esac
done
if [[ -n $push && -z $flist ]]; then
  echo "build-sample: --push needs --flist FILE" >&2
  exit 2
fi
target_dir=${CARGO_TARGET_DIR:-$repo/target}
out=${1:-$target_dir/sample}
mkdir -p "$out"
out=$(cd "$out" && pwd)
exec 9>"$out/.lock"
flock 9
log() { echo "build-sample: $*" >&2; }

busybox=/bin/busybox
[[ -x $busybox ]] || { echo "build-sample: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }
if ldd "$busybox" 2>&1 | grep -q '=>'; then
  echo "build-sample: $busybox is not static (apt-get install busybox-static)" >&2
  exit 1
fi

key=$(cat "$0" "$busybox" | sha256sum | cut -c1-64)
if [[ -f $out/stamp && $(cat "$out/stamp") == "$key" && -x $out/root/start.sh ]]; then
  log "up to date"
else
  rm -rf "$out/root" "$out/stamp"
  work=$(mktemp -d "$out/work.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  root=$work/root
  mkdir -p "$root"/{bin,sbin,etc,root,tmp,proc,sys,dev,run,www}
  cp "$busybox" "$root/bin/busybox"
  for applet in $("$busybox" --list); do
    [[ $applet == busybox ]] || ln -s busybox "$root/bin/$applet"
  done
  cat >"$root/start.sh" <<'SH'
#!/bin/sh
# The sample web application: an index page on port 80.
cat > /www/index.html <<HTML
<!doctype html>
<title>zos sample</title>
<h1>Hello from zos</h1>
<p>Served by $(hostname) from the sample web application flist.</p>
HTML
echo "sample web application: serving /www on port 80"
exec httpd -f -p 80 -h /www
SH
  chmod 755 "$root/start.sh"
  mv "$root" "$out/root"
  echo "$key" >"$out/stamp"
  log "built the sample root"
fi

if [[ -n $flist ]]; then
  zos=${ZOS_BIN:-$target_dir/release/zos}
  [[ -x $zos ]] || (cd "$repo" && CARGO_TARGET_DIR="$target_dir" cargo build --quiet --release -p zos-cli --bin zos)
  "$zos" flist pack "$out/root" -o "$flist" --hub
  [[ -z $push ]] || "$zos" flist push "$flist" --name "$push"
fi
echo "$out"
