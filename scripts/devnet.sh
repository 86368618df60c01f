#!/usr/bin/env bash
# From a fresh Debian 12 machine: install what is missing, build, and start a local grid with nodes.
# Usage: sudo scripts/devnet.sh [NODES]     (stop it with: sudo target/release/zos devnet down)
set -euo pipefail
cd "$(dirname "$0")/.."
nodes="${1:-2}"
scripts/install-deps.sh
cargo build --release --workspace --bins
target/release/zos devnet up --nodes "$nodes"
echo
target/release/zos node list
