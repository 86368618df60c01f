#!/usr/bin/env bash
# The whole check: install what is missing, format, lint, build, run every test, then play
# README.md's quick start (scripts/readme-check.sh); as root, or through sudo.
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
  exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME "$0" "$@"
fi
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# Integration tests start the workspace's binaries (zosd, zos-grid): build them first.
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast "$@"
# Last, alone (the devnet uses default names and ports, and routes a network's range on this
# machine): README's quick start, played as written, on the debug binaries just built.
ZOS_PROFILE=debug scripts/readme-check.sh
