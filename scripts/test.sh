#!/usr/bin/env bash
# The whole check: install what is missing, format, lint, build and run every test (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# Integration tests start the workspace's binaries (zosd, zos-grid): build them first.
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast "$@"
