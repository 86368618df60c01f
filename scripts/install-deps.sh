#!/usr/bin/env bash
# Installs the system packages zos builds and tests with, when they are missing (Debian 12).
set -euo pipefail

packages=(
  iproute2        # ip netns / link / addr: test hosts and devnets
  btrfs-progs     # storage pools
  xfsprogs e2fsprogs util-linux  # foreign filesystems in storage tests, losetup
  nftables        # node firewall and NAT
  wireguard-tools # wg: configures WireGuard interfaces (kernel and userspace)
  iputils-ping    # ping in network tests
  busybox-static  # root file systems built by flist and VM tests
  pkg-config      # -sys crates
  qemu-system-x86 # VMs (vmm tests, benchmarks)
  cpio            # guest initramfs (scripts/build-guest.sh)
  libseccomp-dev libcap-ng-dev  # cargo install virtiofsd
  extlinux syslinux-common fdisk # bootable raw image of the VM-mode test (sfdisk)
  genisoimage     # NoCloud (cidata) seed images of VM-mode machines
  dnsmasq-base    # DHCP server of the zos-init DHCP client test
  zstd kmod binutils  # node image (scripts/build-node.sh): initramfs compression, depmod, readelf
  curl            # HTTP/1.1, HTTP/2 and TLS client of the gateway tests
  redis-tools     # redis-cli: drives the zdb server in its tests (crates/zdb/tests)
  python3-redis   # the Python redis client of the zdb server test (Debian's /usr/bin/python3)
  redis-server    # a receiver of zlogs streams in their tests (crates/provision/tests/zlogs.rs); a 0-db-like block store of the legacy flist tests (crates/flist/tests/legacy_redis.rs)
  pebble          # ACME test CA of the gateway's certificate tests
  openssl         # s_server: a TLS backend of the gateway passthrough test
  ipxe isolinux xorriso ipxe-qemu  # farm bootloaders (zos farm bootloader) and their QEMU boot test
  capnproto       # capnp: compiles the legacy 0-fs flist schema (crates/flist/build.rs)
  tmux            # a terminal for zosd --console, whose pane the console test reads
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing packages: ${missing[*]}; run this as root (or with sudo), or install them: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}" >&2
  # Servers the tests start themselves (redis-server) must not start as system services.
  policy=/usr/sbin/policy-rc.d
  made_policy=
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    made_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [[ -z $made_policy ]] || rm -f "$policy"
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now redis-server >/dev/null 2>&1 || true
  fi
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi

if ! command -v boringtun-cli >/dev/null 2>&1; then
  echo "installing boringtun-cli (userspace WireGuard)" >&2
  cargo install --locked boringtun-cli
fi

if ! command -v virtiofsd >/dev/null 2>&1 && [[ ! -x /usr/libexec/virtiofsd ]]; then
  echo "installing virtiofsd (vhost-user file system daemon for VMs)" >&2
  cargo install --locked virtiofsd
fi

# The explorer's browser tests (crates/grid/tests/explorer.rs): headless Chromium driven over
# WebDriver, and axe-core (from the npm registry) injected into its pages.
browser=()
command -v chromium >/dev/null 2>&1 || browser+=(chromium)
command -v chromedriver >/dev/null 2>&1 || browser+=(chromium-driver)
if ((${#browser[@]})); then
  echo "installing: ${browser[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${browser[@]}" fonts-dejavu-core >/dev/null
fi
axe_version=4.10.3
axe_dir=/usr/local/share/zos-test/axe-core-$axe_version
if [[ ! -f $axe_dir/axe.min.js ]]; then
  command -v npm >/dev/null 2>&1 || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
  }
  echo "fetching axe-core $axe_version from the npm registry" >&2
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "axe-core@$axe_version" >/dev/null && tar -xzf axe-core-$axe_version.tgz)
  mkdir -p "$axe_dir"
  install -m 0644 "$tmp/package/axe.min.js" "$tmp/package/LICENSE" "$axe_dir/"
  rm -rf "$tmp"
fi
