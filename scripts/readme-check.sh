#!/usr/bin/env bash
# Plays README.md's quick start as a new user would, and fails when it does not work as written.
#
# Takes the first ```sh block under the "## Quick start" heading, strips its `# comments` and
# runs each line in order (`bash -e -c LINE`, from the repository's root) in a clean state: a
# fresh temporary HOME, XDG_STATE_HOME, XDG_CONFIG_HOME and XDG_CACHE_HOME (no key, record or
# devnet of this machine is used) and `zos` on PATH as the workspace's own binary. Then:
#   - the `curl` line must have printed the sample web application's page;
#   - `scripts/devnet.sh` again, then `zos devnet down`: a devnet comes up after `down`, and
#     nothing is left behind.
# On a failure it names the README line, runs `zos network leave lan` and `zos devnet down`,
# and exits non-zero. Prints the seconds each step took and from the first command's start to
# the page served.
#
# Usage, as root (or with sudo): scripts/readme-check.sh
# ZOS_PROFILE=debug (as for scripts/devnet.sh) uses target/debug: CI runs it after its tests,
# whose build it reuses. It uses the devnet's default name and ports, and `join` routes the
# network's range on this machine: run nothing else that makes a devnet at the same time.
set -euo pipefail
if [[ $(id -u) -ne 0 ]]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "$0 needs root: run it as root (there is no sudo here)" >&2
    exit 1
  fi
  [[ -d ${CARGO_HOME:-$HOME/.cargo} ]] && export CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
  [[ -d ${RUSTUP_HOME:-$HOME/.rustup} ]] && export RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}"
  exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME,ZOS_PROFILE "$0" "$@"
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
profile=${ZOS_PROFILE:-release}
zos_bin=$repo/target/$profile/zos
page='<h1>Hello from zos</h1>' # what scripts/build-sample.sh's start.sh serves
max_lines=10

# The quick start's commands: the first ```sh block after the heading, comments stripped.
quick_start() {
  awk '
    /^## Quick start/ { inside = 1; next }
    inside && /^## / { exit }
    inside && !block && /^```sh[[:space:]]*$/ { block = 1; next }
    block && /^```/ { exit }
    block { print }
  ' README.md | sed -e 's/^[[:space:]]*#.*$//' -e 's/[[:space:]]#.*$//' -e 's/[[:space:]]*$//' |
    grep -v '^$' || true
}
mapfile -t lines < <(quick_start)
if ((${#lines[@]} == 0)); then
  echo "readme-check: no \`\`\`sh block with commands under \"## Quick start\" in README.md" >&2
  exit 1
fi
if ((${#lines[@]} > max_lines)); then
  echo "readme-check: the quick start has ${#lines[@]} commands, more than $max_lines" >&2
  exit 1
fi

# A clean state, kept apart from this machine's: the toolchain stays where it is.
export CARGO_HOME=${CARGO_HOME:-$HOME/.cargo} RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}
tmp=$(mktemp -d /tmp/zos-readme.XXXXXX)
mkdir -p "$tmp"/{home,state,config,cache,bin}
export HOME=$tmp/home XDG_STATE_HOME=$tmp/state XDG_CONFIG_HOME=$tmp/config
export XDG_CACHE_HOME=$tmp/cache PATH="$tmp/bin:$PATH"
unset ZOS_GRID ZOS_KEY
ln -s "$zos_bin" "$tmp/bin/zos"

failed=""
cleanup() {
  local rc=$?
  if ((rc != 0)); then
    [[ -n $failed ]] && echo "readme-check: FAILED at README line: $failed" >&2
    echo "readme-check: cleaning up" >&2
    if [[ -x $zos_bin ]]; then
      "$zos_bin" network leave lan >&2 || true
      "$zos_bin" devnet down >&2 || true
    fi
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT

# Runs one line with bash -e, its output on stdout and in $tmp/out; records its time.
timings=()
step() {
  local line=$1 t0=$EPOCHREALTIME rc
  echo "readme-check: \$ $line"
  set +e
  bash -e -c "$line" </dev/null 2>&1 | tee "$tmp/out"
  rc=${PIPESTATUS[0]}
  set -e
  timings+=("$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%7.1f", b - a }') s  $line")
  if ((rc != 0)); then
    failed=$line
    echo "readme-check: exit status $rc" >&2
    exit 1
  fi
}

start=$EPOCHREALTIME
page_at=""
for line in "${lines[@]}"; do
  step "$line"
  if [[ $line == curl* ]]; then
    if ! grep -qF "$page" "$tmp/out"; then
      failed="$line (it did not print the sample page: no $page)"
      exit 1
    fi
    page_at=$EPOCHREALTIME
  fi
done
if [[ -z $page_at ]]; then
  failed="(none: the quick start has no curl line fetching the page)"
  exit 1
fi
step scripts/devnet.sh
step "zos devnet down"

echo
echo "readme-check: the quick start works as written (profile $profile)"
printf '  %s\n' "${timings[@]}"
awk -v a="$start" -v b="$page_at" \
  'BEGIN { printf "readme-check: %.1f s from the first command to the page served\n", b - a }'
