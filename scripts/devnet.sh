#!/usr/bin/env bash
# From a fresh Debian 12 machine: install what is missing, build, start a local grid with nodes,
# and publish the guest image its nodes boot container-mode machines with, and the sample web
# application examples/vm.yaml boots (`1/web.fl`: the farmer is twin 1).
# Usage, as root (or with sudo): scripts/devnet.sh [NODES]
# ZOS_VM_NODES=N adds N node VMs: real zos nodes booting the node image (scripts/build-node.sh,
# trusting the machine's devnet release key ${ZOS_CACHE:-~/.cache/zos}/devnet/release.key, made
# on first use) by network through the grid (docs/devnet.md, VM nodes); ZOS_VM_BOOT=iso boots them
# from the farm's bootloader ISO instead (zos devnet up --boot iso).
# Stop it with: target/release/zos devnet down (as root too); running it again after that starts
# a fresh devnet.
# ZOS_PROFILE=debug (opt-in; default release) builds only the workspace's binaries in the debug
# profile and runs target/debug/zos instead: CI uses it after its test build, so the devnet
# costs no second full build.
set -euo pipefail
# Root is needed (namespaces, links, loop devices, packages): as root this runs as it is; as
# another user it runs itself again through sudo, when there is one.
if [[ $(id -u) -ne 0 ]]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "$0 needs root: run it as root (there is no sudo here)" >&2
    exit 1
  fi
  # The caller's Rust toolchain, wherever rustup put it (sudo sets HOME to root's).
  [[ -d ${CARGO_HOME:-$HOME/.cargo} ]] && export CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
  [[ -d ${RUSTUP_HOME:-$HOME/.rustup} ]] && export RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}"
  exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME,ZOS_PROFILE,ZOS_VM_NODES,ZOS_VM_BOOT,ZOS_CACHE "$0" "$@"
fi
cd "$(dirname "$0")/.."
nodes="${1:-2}"
profile="${ZOS_PROFILE:-release}"
case $profile in
  release) profile_flag=--release ;;
  debug) profile_flag= ;;
  *) echo "$0: ZOS_PROFILE must be release or debug, not $profile" >&2; exit 2 ;;
esac
zos="target/$profile/zos"
scripts/install-deps.sh
cargo build $profile_flag --workspace --bins
scripts/install-cli.sh "$zos"   # shell completion and man pages of zos
vm_nodes="${ZOS_VM_NODES:-0}"
vm_args=()
if ((vm_nodes > 0)); then
  keys_dir="${ZOS_CACHE:-$HOME/.cache/zos}/devnet"
  mkdir -p "$keys_dir"
  [[ -f $keys_dir/release.key ]] || "$zos" release keygen -o "$keys_dir/release.key" >/dev/null
  "$zos" release keys "$keys_dir/release.key" >"$keys_dir/release-keys.json"
  echo "building the node image (cached when nothing changed)"
  image=$(ZOS_BIN="$zos" scripts/build-node.sh --release-keys "$keys_dir/release-keys.json" target/node)
  vm_args=(--vm-nodes "$vm_nodes" --node-image "$image" --release-key "$keys_dir/release.key")
fi
"$zos" devnet up --nodes "$nodes" "${vm_args[@]}"
state="${XDG_STATE_HOME:-$HOME/.local/state}/zos/devnet/zdn"
grid=$("$zos" devnet status --json | sed -n 's/.*"grid_url": *"\([^"]*\)".*/\1/p' | head -n 1)
echo "publishing the guest image on the devnet's hub (as the farmer)"
ZOS_GRID="$grid" ZOS_KEY="$state/farmer.key" ZOS_BIN="$zos" \
  scripts/build-guest.sh --flist "$state/zos-guest.fl" --hub --push zos-guest.fl >/dev/null
echo "publishing the sample web application on the devnet's hub (as the farmer)"
ZOS_GRID="$grid" ZOS_KEY="$state/farmer.key" ZOS_BIN="$zos" \
  scripts/build-sample.sh --flist "$state/web.fl" --push web.fl >/dev/null
echo
"$zos" node list
