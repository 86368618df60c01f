#!/usr/bin/env bash
# Builds the guest image of container-mode VMs from Debian's kernel package and guest-init:
#
#   <out>/vmlinux          uncompressed kernel (ELF, booted through its PVH entry: no decompression)
#   <out>/initramfs.cpio   busybox-static, the modules in /lib/modules (load order in
#                          /lib/modules/modules.load) and guest-init as /init (uncompressed newc)
#   <out>/vmlinuz          the compressed kernel as packaged (for bootloaders: VM-mode test images)
#   <out>/modules/         the same modules (for images made by tests)
#   <out>/kernel.version   the kernel release, like 6.1.0-57-amd64
#
# Usage: scripts/build-guest.sh [options] [out-dir]   (default: ${CARGO_TARGET_DIR:-target}/guest)
#   --flist FILE     also pack vmlinux, initramfs.cpio and kernel.version into the flist FILE with
#                    `zos flist pack`, its blocks going to
#   --store URL      a block store (dir:///path, http(s)://…, s3://…), or
#   --hub            the grid's hub (signed as your twin; ZOS_GRID and your key as for `zos`)
#   --push NAME      then publish FILE on the hub as NAME (`zos flist push`)
#
# Nothing is downloaded but Debian's kernel package (apt-get download, extracted with dpkg-deb,
# never installed). The result is cached: when the kernel package, guest-init and this script
# did not change, nothing is rebuilt. Prints the output directory on its last line.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
flist="" store="" hub="" push=""
while [[ ${1:-} == --* ]]; do
  case $1 in
    --flist) flist=${2:?--flist needs a file}; shift 2 ;;
    --store) store=${2:?--store needs a URL}; shift 2 ;;
    --hub) hub=1; shift ;;
    --push) push=${2:?--push needs a name}; shift 2 ;;
    *) echo "build-guest: unknown option $1" >&2; exit 2 ;;
  esac
done
if [[ -n $flist && -z $store && -z $hub ]]; then
  echo "build-guest: --flist needs --store URL or --hub" >&2
  exit 2
fi
target_dir=${CARGO_TARGET_DIR:-$repo/target}
out=${1:-$target_dir/guest}
mkdir -p "$out/cache"
out=$(cd "$out" && pwd)
# One build at a time per output directory (tests of several binaries run in parallel).
exec 9>"$out/.lock"
flock 9

# Modules the guest needs; their dependencies are added from modules.dep.
wanted=(
  virtio_mmio virtio_pci virtio_net virtio_blk virtio_console
  virtiofs 9p 9pnet_virtio fuse
  ext4 crc32c_generic isofs
)

log() { echo "build-guest: $*" >&2; }

# 1. guest-init, static (glibc with crt-static: it uses std, libc and nix only).
if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
  triple=x86_64-unknown-linux-musl
  flags=""
else
  triple=x86_64-unknown-linux-gnu
  flags="-C target-feature=+crt-static"
fi
log "building guest-init ($triple, static)"
(cd "$repo" && RUSTFLAGS="$flags" CARGO_TARGET_DIR="$target_dir" \
  CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=true \
  cargo build --quiet --release -p zos-guest-init --bin guest-init --target "$triple")
init_bin=$target_dir/$triple/release/guest-init
if ldd "$init_bin" 2>&1 | grep -q '=>'; then
  echo "build-guest: $init_bin is not static" >&2
  exit 1
fi

# 2. The kernel package (what linux-image-amd64 depends on), downloaded once.
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [[ -z $kpkg ]]; then
  echo "build-guest: apt knows no linux-image-amd64 (run apt-get update)" >&2
  exit 1
fi
deb=$(ls "$out/cache/${kpkg}"_*.deb 2>/dev/null | head -n1 || true)
if [[ -z $deb ]]; then
  log "downloading $kpkg"
  (cd "$out/cache" && apt-get download -qq -o APT::Sandbox::User=root "$kpkg")
  deb=$(ls "$out/cache/${kpkg}"_*.deb | head -n1)
fi

busybox=/bin/busybox
[[ -x $busybox ]] || { echo "build-guest: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }

key=$(cat "$0" "$init_bin" "$busybox" | sha256sum | cut -c1-64)-$(basename "$deb")
if [[ -f $out/stamp && $(cat "$out/stamp") == "$key" && -f $out/vmlinux && -f $out/initramfs.cpio ]]; then
  log "up to date ($kpkg)"
  uptodate=1
fi

build() {
work=$(mktemp -d "$out/cache/work.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "extracting $(basename "$deb")"
dpkg-deb -x "$deb" "$work/pkg"
release=$(ls "$work/pkg/lib/modules" | head -n1)
moddir=$work/pkg/lib/modules/$release

# 3. vmlinux: the xz stream inside vmlinuz that decompresses to an ELF file.
vmlinuz=$work/pkg/boot/vmlinuz-$release
found=""
for off in $(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | cut -d: -f1); do
  tail -c +$((off + 1)) "$vmlinuz" | xz -dc 2>/dev/null >"$work/vmlinux" || true
  if [[ $(head -c4 "$work/vmlinux" | od -An -c | tr -d ' ') == '177ELF' ]]; then
    found=1
    break
  fi
done
[[ -n $found ]] || { echo "build-guest: no xz-compressed ELF kernel in $vmlinuz" >&2; exit 1; }

# 4. Modules in dependency order (each after what it needs). The package has no modules.dep
# (depmod writes it at install), so the dependencies come from each module's own modinfo.
declare -A path_of=() seen=()
while IFS= read -r f; do
  n=$(basename "${f%%.ko*}")
  path_of[${n//-/_}]=$f
done < <(cd "$moddir" && find kernel -name '*.ko*')
builtin=$(sed -n 's#.*/\([^/]*\)\.ko$#\1#p' "$moddir/modules.builtin" | tr - _)
modinfo_depends() {
  case $1 in
    *.ko.xz) xz -dc "$1" ;;
    *.ko.zst) zstd -qdc "$1" ;;
    *.ko.gz) gzip -dc "$1" ;;
    *) cat "$1" ;;
  esac | LC_ALL=C grep -aoP 'depends=[^\x00]*' | head -n1 | cut -d= -f2 | tr , ' '
}
order=()
visit() {
  local name=${1//-/_} path d
  [[ -n ${seen[$name]:-} ]] && return
  seen[$name]=1
  path=${path_of[$name]:-}
  if [[ -z $path ]]; then
    grep -qx "$name" <<<"$builtin" || { echo "build-guest: no module $name in $release" >&2; exit 1; }
    return
  fi
  for d in $(modinfo_depends "$moddir/$path"); do visit "$d"; done
  order+=("$path")
}
for m in "${wanted[@]}"; do visit "$m"; done

root=$work/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,run,newroot,zos,lib/modules}
cp "$busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
cp "$init_bin" "$root/init"
: >"$root/lib/modules/modules.load"
for path in "${order[@]}"; do
  name=$(basename "${path%%.ko*}").ko
  case $path in
    *.ko.xz) xz -dc "$moddir/$path" >"$root/lib/modules/$name" ;;
    *.ko.zst) zstd -qdc "$moddir/$path" >"$root/lib/modules/$name" ;;
    *.ko.gz) gzip -dc "$moddir/$path" >"$root/lib/modules/$name" ;;
    *) cp "$moddir/$path" "$root/lib/modules/$name" ;;
  esac
  echo "$name" >>"$root/lib/modules/modules.load"
done
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$work/initramfs.cpio"

rm -rf "$out/modules"
cp -r "$root/lib/modules" "$out/modules"
mv "$work/vmlinux" "$out/vmlinux"
cp "$vmlinuz" "$out/vmlinuz"
mv "$work/initramfs.cpio" "$out/initramfs.cpio"
echo "$release" >"$out/kernel.version"
echo "$key" >"$out/stamp"
log "built $release: $(wc -l <"$out/modules/modules.load") modules, initramfs $(du -k "$out/initramfs.cpio" | cut -f1) KiB"
}
[[ -n ${uptodate:-} ]] || build

if [[ -n $flist ]]; then
  zos=${ZOS_BIN:-$target_dir/release/zos}
  [[ -x $zos ]] || (cd "$repo" && CARGO_TARGET_DIR="$target_dir" cargo build --quiet --release -p zos-cli --bin zos)
  pub=$(mktemp -d "$out/cache/publish.XXXXXX")
  cp "$out/vmlinux" "$out/initramfs.cpio" "$out/kernel.version" "$pub/"
  if [[ -n $hub ]]; then to=(--hub); else to=(--store "$store"); fi
  "$zos" flist pack "$pub" -o "$flist" "${to[@]}" --tag "kernel=$(cat "$out/kernel.version")"
  rm -rf "$pub"
  [[ -z $push ]] || "$zos" flist push "$flist" --name "$push"
fi
echo "$out"
