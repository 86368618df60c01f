#!/usr/bin/env bash
# From a fresh Debian 12 machine: install what is missing, build, start a local grid with nodes,
# and publish the guest image its nodes boot container-mode machines with.
# Usage: sudo scripts/devnet.sh [NODES]     (stop it with: sudo target/release/zos devnet down)
set -euo pipefail
cd "$(dirname "$0")/.."
nodes="${1:-2}"
scripts/install-deps.sh
cargo build --release --workspace --bins
target/release/zos devnet up --nodes "$nodes"
state="${XDG_STATE_HOME:-$HOME/.local/state}/zos/devnet/zdn"
grid=$(target/release/zos devnet status --json | sed -n 's/.*"grid_url": *"\([^"]*\)".*/\1/p' | head -n 1)
echo "publishing the guest image on the devnet's hub (as the farmer)"
ZOS_GRID="$grid" ZOS_KEY="$state/farmer.key" ZOS_BIN=target/release/zos \
  scripts/build-guest.sh --flist "$state/zos-guest.fl" --hub --push zos-guest.fl >/dev/null
echo
target/release/zos node list
