#!/usr/bin/env bash
# Builds the zos node image (docs/boot.md) from Debian packages and our own binaries:
#
#   <out>/vmlinuz              Debian's kernel (what linux-image-amd64 depends on), as packaged
#   <out>/initramfs.cpio.zst   newc, zstd: zos-init as /init, zos-flist-mount in /usr/bin (and
#                              their libraries when they are dynamic),
#                              the modules the node needs under /usr/lib/modules/<release> with
#                              modules.dep (depmod), /etc/zos/release-keys.json
#   <out>/kernel.version       the kernel release, like 6.1.0-57-amd64
#   <out>/zos-base.fl          runtime flist: the Debian userland zosd runs (QEMU, virtiofsd,
#                              btrfs-progs, nftables, iproute2, WireGuard tools, e2fsprogs, xfsprogs,
#                              util-linux, genisoimage) with their libraries, usr-merged, no shell
#   <out>/zos.fl               runtime flist: zosd, zos-gateway, zos-zdb and zos-flist-mount in usr/bin
#   <out>/debug.fl             the debug flist, for runmode dev nodes booted with zos-debug only:
#                              Debian's busybox-static as bin/busybox with its applet links
#                              (bin/sh …); not a runtime flist, outside the no-shell rule
#   <out>/blocks/              the block store of the flists (dir:// store, content addressed)
#   <out>/packages.txt         the Debian packages (name version) the image is made of
#   <out>/sizes.txt            sizes of the pieces
#
# Usage: scripts/build-node.sh [options] [out-dir]   (default: ${CARGO_TARGET_DIR:-target}/node)
#   --init PATH          zos-init binary for /init (default: built from crates/init)
#   --profile P          debug or release (default, or $ZOS_NODE_PROFILE): the cargo profile of
#                        zos-init, zosd, zos-gateway, zos-zdb, zos-flist-mount and zos (debug ones are
#                        stripped)
#   --no-build           use the profile's binaries as they are (tests: the workspace is built
#                        before them, and a build from inside a test run would not be reused)
#   --release-keys FILE  the release keys the node trusts (ReleaseKeys JSON); the default trusts
#                        none ({"keys":[],"threshold":1}), so such a node accepts no release
#
# Nothing is downloaded but Debian packages (apt-get download into ${ZOS_CACHE:-~/.cache/zos}/debs,
# extracted with dpkg-deb, never installed, no maintainer script run). No shell, getty, login,
# su, sshd or busybox is in any output: they are deleted from the trees and the build fails if
# one is left (debug.fl, which is not a runtime flist and which releases of other runmodes than
# dev cannot carry, is the one exception). The result is cached: when the package versions, our binaries, the keys and this
# script did not change, nothing is rebuilt. Prints the output directory on its last line.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
init_bin="" keys_file="" profile=${ZOS_NODE_PROFILE:-release} no_build=""
while [[ ${1:-} == --* ]]; do
  case $1 in
    --init) init_bin=${2:?--init needs a path}; shift 2 ;;
    --release-keys) keys_file=${2:?--release-keys needs a file}; shift 2 ;;
    --profile) profile=${2:?--profile needs debug or release}; shift 2 ;;
    --no-build) no_build=1; shift ;;
    *) echo "build-node: unknown option $1" >&2; exit 2 ;;
  esac
done
target_dir=${CARGO_TARGET_DIR:-$repo/target}
out=${1:-$target_dir/node}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cache=${ZOS_CACHE:-$HOME/.cache/zos}
debs=$cache/debs
mkdir -p "$debs"
exec 9>"$out/.lock"
flock 9
log() { echo "build-node: $*" >&2; }
die() { echo "build-node: $*" >&2; exit 1; }

# The userland of zos-base: what zosd runs (crates/*/src: find_program and Command::new).
base_packages=(
  qemu-system-x86  # qemu-system-x86_64; qemu-system-common brings /usr/lib/qemu/virtiofsd
  btrfs-progs nftables wireguard-tools iproute2 e2fsprogs xfsprogs util-linux genisoimage
)
# Dependencies left out: package tooling, interpreters and data only maintainer scripts or
# tools zosd does not run use (libicu72 is xfs_scrub's only; xfs_scrub is left out).
skip_packages=(
  adduser cdebconf debconf dpkg install-info passwd tar logsave readline-common
  perl perl-base perl-modules-5.36 libperl5.36
  python3 python3-minimal python3.11 python3.11-minimal libpython3-stdlib libpython3.11-minimal
  libpython3.11-stdlib mailcap mime-support media-types iso-codes
  libdebian-installer4 libnewt0.52 libslang2 libtextwrap1 libelogind0
  libpam-modules libpam-modules-bin libsemanage-common libsemanage2 libgdbm-compat4 libgdbm6
  libdb5.3 libicu72
  bash dash busybox busybox-static login sudo openssh-server
)
# No file of these names may be in the image: shells, logins and remote access.
forbidden=(sh bash dash ash busybox zsh ksh mksh rbash csh tcsh fish login getty agetty mingetty
  sshd dropbear su sulogin runuser)
# Modules the node needs; their dependencies are added from each module's modinfo. The
# checksum algorithms come first: they are soft dependencies (softdep=pre: crc32c, xxhash64,
# blake2b-256, by alias) of libcrc32c, ext4 and btrfs, which zos-init loads in this order.
modules=(
  crc32c_generic crc32c_intel xxhash_generic blake2b_generic sha256_generic
  virtio_pci virtio_net virtio_blk virtio_scsi virtio_console virtio_rng virtio_balloon
  ahci nvme sd_mod loop
  e1000 e1000e igb ixgbe i40e r8169 tg3 bnx2
  fuse overlay btrfs ext4 xfs vfat
  tun tap macvtap bridge br_netfilter veth macvlan ipvlan vxlan 8021q dummy wireguard
  nf_tables nf_conntrack nf_nat nft_chain_nat nft_nat nft_masq nft_redir nft_ct nft_reject_inet
  nft_fib_inet nft_limit nft_compat nft_quota
  # The bridge family's meta and reject (VM ports' filters): the node has no modprobe, so the
  # kernel cannot load an nft expression on demand; every one zos uses is loaded at boot.
  nft_meta_bridge nft_reject_bridge nf_conntrack_bridge
  vhost_net vhost_vsock kvm_intel kvm_amd
  button evdev  # the ACPI power button zos-init listens to
)

# 1. Our binaries: release by default; debug (--profile debug) reuses a test build's binaries,
# stripped when they are put in the image.
case $profile in
  release) build_flags=(--quiet --release) ;;
  debug) build_flags=(--quiet) ;;
  *) die "--profile must be debug or release, not $profile" ;;
esac
export CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=true
build() { (cd "$repo" && CARGO_TARGET_DIR="$target_dir" cargo build "${build_flags[@]}" "$@"); }
if [[ $profile == debug && -z $no_build ]]; then
  # The workspace's binaries as `cargo build --workspace --bins` makes them.
  log "building the workspace's binaries (debug)"
  build --workspace --bins
fi
if [[ -z $init_bin ]]; then
  [[ -d $repo/crates/init ]] || die "no crates/init in this tree: pass --init PATH (a zos-init binary)"
  [[ $profile == debug || -n $no_build ]] || { log "building zos-init"; build -p zos-init --bin zos-init; }
  init_bin=$target_dir/$profile/zos-init
fi
[[ -f $init_bin && -x $init_bin ]] || die "$init_bin is not an executable (zos-init for /init)"
init_bin=$(cd "$(dirname "$init_bin")" && pwd)/$(basename "$init_bin")
if [[ $profile == release && -z $no_build ]]; then
  log "building zosd, zos-gateway, zos-zdb and zos-flist-mount"
  build -p zosd -p zos-gateway -p zos-zdb -p zos-flist --bin zosd --bin zos-gateway --bin zos-zdb \
    --bin zos-flist-mount
  [[ -n ${ZOS_BIN:-} ]] || build -p zos-cli --bin zos
fi
zosd=$target_dir/$profile/zosd
mounter=$target_dir/$profile/zos-flist-mount
gateway=$target_dir/$profile/zos-gateway
zdb=$target_dir/$profile/zos-zdb
zos=${ZOS_BIN:-$target_dir/$profile/zos}
for b in "$zosd" "$mounter" "$gateway" "$zdb" "$zos"; do
  [[ -x $b ]] || die "$b is missing: build the workspace's binaries first (cargo build --workspace --bins)"
done
if [[ -n $keys_file ]]; then
  [[ -f $keys_file ]] || die "--release-keys $keys_file: no such file"
  keys=$(cat "$keys_file")
else
  keys='{"keys":[],"threshold":1}'
fi

# 2. The packages: the kernel and the closure of base_packages' dependencies, minus skip_packages.
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[[ -n $kpkg ]] || die "apt knows no linux-image-amd64 (run apt-get update)"
mapfile -t closure < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
  --no-breaks --no-replaces --no-enhances "${base_packages[@]}" 2>/dev/null |
  grep -v '^[ <]' | LC_ALL=C sort -u | grep -vxF -f <(printf '%s\n' "${skip_packages[@]}"))
((${#closure[@]} > 10)) || die "apt could not resolve ${base_packages[*]} (run apt-get update)"
pkgs=("$kpkg" "${closure[@]}")
# name=version for each, as apt would download it now.
mapfile -t versions < <(apt-cache policy "${pkgs[@]}" | awk '
  /^[^ ]/ { sub(":$", "", $1); name = $1 }
  /Candidate:/ { print name " " $2 }')
((${#versions[@]} == ${#pkgs[@]})) || die "apt-cache policy gave ${#versions[@]} versions for ${#pkgs[@]} packages"
deb_of() { # name version -> cached .deb path (apt's file name: epoch colon as %3a)
  local v=${2//:/%3a}
  ls "$debs/${1}_${v}_"*.deb 2>/dev/null | head -n1
}
# The debug flist's one package, apart from the image's.
debug_version=$(apt-cache policy busybox-static | awk '/Candidate:/ {print $2}')
[[ -n $debug_version && $debug_version != "(none)" ]] || die "apt knows no busybox-static (run apt-get update)"
missing=()
for nv in "${versions[@]}" "busybox-static $debug_version"; do
  read -r n v <<<"$nv"
  [[ $v != "(none)" ]] || die "package $n has no installable version"
  [[ -n $(deb_of "$n" "$v") ]] || missing+=("$n=$v")
done
if ((${#missing[@]})); then
  log "downloading ${#missing[@]} Debian packages into $debs"
  (cd "$debs" && apt-get download -qq -o APT::Sandbox::User=root "${missing[@]}")
fi

key=$( {
  cat "$0" "$init_bin" "$zosd" "$mounter" "$gateway" "$zdb"
  printf '%s\n' "$keys" "${versions[@]}" "busybox-static $debug_version"
} | sha256sum | cut -c1-64)
if [[ -f $out/stamp && $(cat "$out/stamp") == "$key" && -f $out/initramfs.cpio.zst &&
  -f $out/zos-base.fl && -f $out/zos.fl && -f $out/debug.fl ]]; then
  log "up to date ($kpkg, ${#closure[@]} packages)"
  cat "$out/sizes.txt" >&2
  echo "$out"
  exit 0
fi

work=$(mktemp -d "$out/work.XXXXXX")
trap 'rm -rf "$work"' EXIT
rm -f "$out/stamp"
if [[ $profile == debug ]]; then
  mkdir -p "$work/bin"
  for b in init_bin zosd mounter gateway zdb; do
    strip -o "$work/bin/$(basename "${!b}")" "${!b}"
    printf -v "$b" '%s' "$work/bin/$(basename "${!b}")"
  done
fi

# Files or links named like a shell or a login anywhere under $1.
forbidden_in() {
  local args=() n root=$1
  shift
  for n in "${forbidden[@]}"; do args+=(-o -name "$n"); done
  find "$root" \( -false "${args[@]}" \) \( -type f -o -type l \) "$@"
}

# Every ELF file under $1 finds its DT_NEEDED libraries in $1's library directories.
check_needed() {
  local root=$1 f lib bad=0
  local dirs=("$root/usr/lib/x86_64-linux-gnu" "$root/usr/lib" "$root/usr/lib64"
    "$root/usr/lib/x86_64-linux-gnu/gconv") # gconv modules find their helpers by $ORIGIN
  declare -A need=()
  while IFS= read -r -d '' f; do
    [[ $(head -c4 "$f" | od -An -c | tr -d ' ') == '177ELF' ]] || continue
    while IFS= read -r lib; do need[$lib]+="${f#"$root"} "; done < <(readelf -d "$f" 2>/dev/null |
      sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
  done < <(find "$root" -type f \( -perm -u+x -o -name '*.so*' \) -print0)
  for lib in "${!need[@]}"; do
    local found=""
    for d in "${dirs[@]}"; do [[ -e $d/$lib || -L $d/$lib ]] && found=1 && break; done
    if [[ -z $found ]]; then
      echo "build-node: $lib (needed by ${need[$lib]}) is in no package of the image" >&2
      bad=1
    fi
  done
  return $bad
}

# 3. The kernel and its modules.
kdeb=$(deb_of "$kpkg" "$(awk -v n="$kpkg" '$1 == n {print $2}' < <(printf '%s\n' "${versions[@]}"))")
log "extracting $(basename "$kdeb")"
dpkg-deb -x "$kdeb" "$work/kernel"
release=$(ls "$work/kernel/lib/modules" | head -n1)
moddir=$work/kernel/lib/modules/$release
declare -A path_of=() seen=()
while IFS= read -r f; do
  n=$(basename "${f%%.ko*}")
  path_of[${n//-/_}]=$f
done < <(cd "$moddir" && find kernel -name '*.ko*')
builtin=$(sed -n 's#.*/\([^/]*\)\.ko$#\1#p' "$moddir/modules.builtin" | tr - _)
unpack_ko() {
  case $1 in
    *.ko.xz) xz -dc "$1" ;;
    *.ko.zst) zstd -qdc "$1" ;;
    *.ko.gz) gzip -dc "$1" ;;
    *) cat "$1" ;;
  esac
}
selected=()
visit() {
  local name=${1//-/_} path d
  [[ -n ${seen[$name]:-} ]] && return
  seen[$name]=1
  path=${path_of[$name]:-}
  if [[ -z $path ]]; then
    grep -qx "$name" <<<"$builtin" || die "no module $name in $release"
    return
  fi
  for d in $(unpack_ko "$moddir/$path" | LC_ALL=C grep -aoP 'depends=[^\x00]*' | head -n1 | cut -d= -f2 | tr , ' '); do
    visit "$d"
  done
  selected+=("$path")
}
for m in "${modules[@]}"; do visit "$m"; done

init=$work/initramfs
mkdir -p "$init"/{dev,proc,sys,run,tmp,root,etc/zos,usr/bin,usr/sbin,usr/lib/modules/"$release",usr/lib64}
for d in bin sbin lib lib64; do ln -s "usr/$d" "$init/$d"; done
for path in "${selected[@]}"; do
  dest=$init/usr/lib/modules/$release/${path%.ko*}.ko
  mkdir -p "$(dirname "$dest")"
  unpack_ko "$moddir/$path" >"$dest"
done
cp "$moddir"/modules.{builtin,builtin.modinfo,order} "$init/usr/lib/modules/$release/"
# (The package's System.map is a stub, so depmod cannot check symbols; the closure over each
# module's depends= above is what makes the set complete.)
depmod_err=$(depmod -b "$init/usr" "$release" 2>&1) || die "depmod failed: $depmod_err"
[[ -s $init/usr/lib/modules/$release/modules.dep ]] || die "depmod wrote no modules.dep"
cp "$init_bin" "$init/init"
chmod 755 "$init/init"
printf '%s\n' "$keys" >"$init/etc/zos/release-keys.json"
# What zos-init loads (with their dependencies, from modules.dep).
printf '%s\n' "# the modules zos-init loads at boot (scripts/build-node.sh)" "${modules[@]}" >"$init/etc/zos/modules"

# 4. zos-base: the packages' trees merged, usr-merged, without shells, docs or package metadata.
base=$work/zos-base
mkdir -p "$base"
log "extracting ${#closure[@]} packages for zos-base"
for nv in "${versions[@]:1}"; do
  read -r n v <<<"$nv"
  dpkg-deb -x "$(deb_of "$n" "$v")" "$base"
done
for d in bin sbin lib lib64; do
  [[ -d $base/$d && ! -L $base/$d ]] || continue
  mkdir -p "$base/usr/$d"
  while IFS= read -r -d '' f; do
    rel=${f#"$base/$d/"}
    if [[ -e $base/usr/$d/$rel && ! -d $base/usr/$d/$rel ]]; then
      die "/$d/$rel and /usr/$d/$rel both exist: cannot usr-merge"
    fi
  done < <(find "$base/$d" ! -type d -print0)
  cp -a "$base/$d/." "$base/usr/$d/"
  rm -rf "${base:?}/$d"
done
rm -rf "$base"/usr/share/{doc,man,info,locale,lintian,bug,bash-completion,zsh} \
  "$base"/usr/sbin/xfs_scrub "$base"/usr/sbin/xfs_scrub_all "$base"/usr/lib/x86_64-linux-gnu/xfsprogs \
  "$base"/usr/sbin/arpd "$base"/usr/lib/x86_64-linux-gnu/sasl2/libsasldb.so* \
  "$base"/usr/lib/x86_64-linux-gnu/tc/q_atm.so \
  "$base"/etc/init.d "$base"/etc/cron.* "$base"/usr/lib/systemd "$base"/lib/systemd
forbidden_in "$base" -print -delete | sed "s#^$base#build-node: deleted #" >&2
# What zosd runs must be there.
for p in usr/bin/qemu-system-x86_64 usr/lib/qemu/virtiofsd usr/bin/btrfs usr/sbin/mkfs.btrfs \
  usr/sbin/nft usr/bin/wg usr/bin/ip usr/sbin/mkfs.ext4 usr/sbin/mkfs.xfs usr/sbin/blkid \
  usr/bin/genisoimage usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so; do
  [[ -e $base/$p ]] || die "zos-base has no /$p"
done
check_needed "$base" || die "zos-base is missing libraries (add their packages, or drop them from skip_packages)"

# 5. zos: our binaries; they are dynamically linked against zos-base's glibc.
zt=$work/zos
mkdir -p "$zt/usr/bin"
cp "$zosd" "$mounter" "$gateway" "$zdb" "$zt/usr/bin/"
mkdir -p "$work/check/usr/lib"
ln -s "$base/usr/lib/x86_64-linux-gnu" "$work/check/usr/lib/x86_64-linux-gnu"
cp -a "$zt/usr/bin" "$work/check/usr/"
check_needed "$work/check" || die "zosd needs libraries zos-base does not have"
rm -rf "$work/check"

# The initramfs: zos-flist-mount (zos-init mounts the runtime flists with it), and the libraries
# of both (from the same Debian packages) when they are dynamic.
cp "$mounter" "$init/usr/bin/zos-flist-mount"
declare -A copied=()
copy_libs() { # the DT_NEEDED of $1, and theirs, into the initramfs
  local lib src
  while IFS= read -r lib; do
    [[ -z ${copied[$lib]:-} ]] || continue
    copied[$lib]=1
    src=$base/usr/lib/x86_64-linux-gnu/$lib
    [[ -e $src ]] || die "$(basename "$1") needs $lib, which no package of the image has"
    mkdir -p "$init/usr/lib/x86_64-linux-gnu"
    cp -L "$src" "$init/usr/lib/x86_64-linux-gnu/$lib"
    copy_libs "$init/usr/lib/x86_64-linux-gnu/$lib"
  done < <(readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
}
for bin in "$init/init" "$init/usr/bin/zos-flist-mount"; do
  readelf -l "$bin" 2>/dev/null | grep -q 'Requesting program interpreter' || continue
  log "$(basename "$bin") is dynamic: adding its libraries from libc6 and friends"
  copy_libs "$bin"
  if [[ ! -e $init/usr/lib64/ld-linux-x86-64.so.2 ]]; then
    cp -L "$base/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" "$init/usr/lib/x86_64-linux-gnu/"
    ln -s ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$init/usr/lib64/ld-linux-x86-64.so.2"
  fi
done
check_needed "$init" || die "the initramfs's binaries need libraries it lacks"

for t in "$init" "$base" "$zt"; do
  left=$(forbidden_in "$t")
  [[ -z $left ]] || die "a shell or login is left in the image: $left"
done

# 6. Pack: the initramfs as compressed newc, the runtime trees as flists in one block store.
log "packing the initramfs"
(cd "$init" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | zstd -q -19 -T0 >"$work/initramfs.cpio.zst"
mkdir -p "$out/blocks"
for name in zos-base zos; do
  log "packing $name"
  "$zos" flist pack "$work/$name" -o "$work/$name.fl" --store "dir://$out/blocks" \
    --tag "kernel=$release" >/dev/null
done

# The debug flist: busybox and its applets, for a console shell on dev nodes in debug mode. It
# is packed after the no-shell check on purpose, and only zos-init with zos-debug on runmode
# dev mounts it (docs/boot.md).
dbg=$work/debug
mkdir -p "$work/debug-deb" "$dbg/bin"
dpkg-deb -x "$(deb_of busybox-static "$debug_version")" "$work/debug-deb"
cp "$work/debug-deb/bin/busybox" "$dbg/bin/busybox"
for a in $("$dbg/bin/busybox" --list); do
  [[ $a == busybox || -e $dbg/bin/$a ]] || ln -s busybox "$dbg/bin/$a"
done
[[ -L $dbg/bin/sh ]] || die "busybox-static $debug_version has no sh applet"
log "packing debug"
"$zos" flist pack "$dbg" -o "$work/debug.fl" --store "dir://$out/blocks" >/dev/null

cp "$work/kernel/boot/vmlinuz-$release" "$work/vmlinuz"
mv "$work/vmlinuz" "$work/initramfs.cpio.zst" "$work/zos-base.fl" "$work/zos.fl" "$work/debug.fl" "$out/"
echo "$release" >"$out/kernel.version"
printf '%s\n' "${versions[@]}" "busybox-static $debug_version (debug.fl only)" >"$out/packages.txt"
kib() { du -sk --apparent-size "$1" | cut -f1; }
{
  echo "kernel $release: vmlinuz $(kib "$out/vmlinuz") KiB"
  echo "initramfs: $(kib "$out/initramfs.cpio.zst") KiB compressed, $(kib "$init") KiB unpacked, ${#selected[@]} modules"
  echo "zos-base: $(kib "$base") KiB in $(find "$base" | wc -l) entries from ${#closure[@]} packages, flist $(kib "$out/zos-base.fl") KiB"
  echo "zos: $(kib "$zt") KiB, flist $(kib "$out/zos.fl") KiB"
  echo "debug: $(kib "$dbg") KiB (busybox-static, dev debug mode only), flist $(kib "$out/debug.fl") KiB"
  echo "blocks: $(find "$out/blocks" -type f | wc -l) blocks, $(du -sk "$out/blocks" | cut -f1) KiB"
} >"$out/sizes.txt"
echo "$key" >"$out/stamp"
log "built:"
cat "$out/sizes.txt" >&2
echo "$out"
