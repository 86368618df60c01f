#!/usr/bin/env bash
# Installs the shell completion (bash, zsh, fish) and the man pages of a zos binary.
# Usage: scripts/install-cli.sh [ZOS_BINARY]   (default: target/release/zos)
# As root: /etc/bash_completion.d/zos, /usr/local/share/zsh/site-functions/_zos,
# /usr/local/share/fish/vendor_completions.d/zos.fish and /usr/local/share/man/man1.
# Otherwise: ~/.local/share/bash-completion/completions/zos, ~/.local/share/zsh/site-functions,
# ~/.local/share/fish/vendor_completions.d and ~/.local/share/man/man1.
# ZOS_COMPLETION_DIR (bash only) and ZOS_MAN_DIR (a man directory: pages go in its man1) override.
# Quiet, and idempotent: a file is written only when its content changes.
set -euo pipefail
zos="${1:-target/release/zos}"
if [[ ! -x $zos ]]; then
  echo "$0: $zos is not an executable zos: build it (cargo build --release -p zos-cli) or name it" >&2
  exit 1
fi
if [[ $(id -u) -eq 0 ]]; then
  bash_dir=/etc/bash_completion.d
  share=/usr/local/share
else
  share="${XDG_DATA_HOME:-$HOME/.local/share}"
  bash_dir="$share/bash-completion/completions"
fi
bash_dir="${ZOS_COMPLETION_DIR:-$bash_dir}"
man_dir="${ZOS_MAN_DIR:-$share/man}/man1"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# put SRC DEST: DEST becomes SRC, unless it already is.
put() {
  if ! cmp -s "$1" "$2"; then
    mkdir -p "$(dirname "$2")"
    install -m 0644 "$1" "$2"
  fi
}

"$zos" completion bash >"$work/zos.bash"
put "$work/zos.bash" "$bash_dir/zos"
if [[ -z ${ZOS_COMPLETION_DIR:-} ]]; then
  "$zos" completion zsh >"$work/_zos"
  put "$work/_zos" "$share/zsh/site-functions/_zos"
  "$zos" completion fish >"$work/zos.fish"
  put "$work/zos.fish" "$share/fish/vendor_completions.d/zos.fish"
fi
mkdir -p "$work/man"
"$zos" man --dir "$work/man"
for page in "$work"/man/*.1; do
  put "$page" "$man_dir/$(basename "$page")"
done
# Pages of commands that no longer exist.
for page in "$man_dir"/zos.1 "$man_dir"/zos-*.1; do
  [[ -e $page && ! -e "$work/man/$(basename "$page")" ]] && rm -f "$page"
done
exit 0
