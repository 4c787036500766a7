#!/usr/bin/env bash
# Provision the cgroup v2 test guest (docs/v2-guest.md). Idempotent, as root; silent when
# everything is already in place. What it sets up:
#   - Debian packages: qemu-system-x86 (no recommends), busybox-static, kmod
#   - Debian's own kernel: the package that linux-image-amd64 depends on, fetched with
#     `apt-get download` and unpacked with dpkg-deb into the cache dir below, which lives
#     outside the checkout so fresh clones on the same machine reuse it:
#       $MINICONTAINER_V2GUEST_CACHE (default /var/cache/minicontainer/v2guest)/<kernel-version>/
#         pkg/        the unpacked .deb (boot/vmlinuz-*, lib/modules/<ver>/ plus a depmod index)
#         vmlinux     the uncompressed kernel, for a PVH direct boot (faster than the bzImage)
#         initrd.cpio the busybox initramfs (scripts/v2guest/build-initramfs.sh)
#       current       the name of the kernel-version directory run.sh boots
# The initramfs is rebuilt whenever scripts/v2guest/init or build-initramfs.sh change.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${MINICONTAINER_V2GUEST_CACHE:-/var/cache/minicontainer/v2guest}
say() { echo "v2guest provision: $*"; }

if [ "$(id -u)" != 0 ]; then
    echo "v2guest provision: must run as root; try: sudo $0" >&2
    exit 1
fi

mkdir -p "$cache"
exec 9> "$cache/.lock"
flock 9    # concurrent runs wait for one provisioner (apt and dpkg hold locks of their own)
rm -rf "$cache"/.build.*    # left by an interrupted provision

apt_updated=0
apt_update() {
    if [ $apt_updated = 0 ]; then
        say "apt-get update"
        apt-get update -qq
        apt_updated=1
    fi
}

# Debian packages. kmod gives the guest a working modprobe (its index is built below with
# depmod) and resolves the initramfs module order at build time.
packages=(qemu-system-x86 busybox-static kmod xz-utils)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d answering 101 keeps package services from starting during the install.
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
    fi
    status=0
    say "apt-get install ${missing[*]}"
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
        apt_update
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
    fi
    if [ $made_policy = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    if [ $status != 0 ]; then echo "v2guest provision: apt-get install failed ($status)" >&2; exit $status; fi
fi

# Which kernel: the package linux-image-amd64 depends on, e.g. linux-image-6.1.0-57-amd64.
kernel_pkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }'; }
pkg=$(kernel_pkg)
if [ -z "$pkg" ]; then
    apt_update
    pkg=$(kernel_pkg)
fi
if [ -z "$pkg" ]; then
    echo "v2guest provision: apt-cache finds no linux-image-amd64 dependency" >&2
    exit 1
fi
kver=${pkg#linux-image-}
kdir=$cache/$kver

# The kernel package, unpacked once per kernel version.
if [ ! -f "$kdir/pkg/.complete" ]; then
    work=$(mktemp -d "$cache/.build.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    chmod 755 "$work"
    chown _apt "$work" 2>/dev/null || true   # apt-get download drops to the _apt user
    say "apt-get download $pkg"
    if ! (cd "$work" && apt-get download -qq "$pkg" >/dev/null 2>&1); then
        apt_update
        (cd "$work" && apt-get download -qq "$pkg" >/dev/null)
    fi
    deb=$(ls "$work"/*.deb)
    say "dpkg-deb -x $(basename "$deb") $kdir/pkg"
    dpkg-deb -x "$deb" "$work/pkg"
    rm -f "$deb"
    # The .deb has no modules.dep (its postinst runs depmod); build the index here so the
    # guest's modprobe (the host's kmod, seen through 9p) can load modules on demand.
    say "depmod $kver"
    depmod -b "$work/pkg" "$kver"
    touch "$work/pkg/.complete"
    rm -rf "$kdir"
    mkdir -p "$kdir"
    mv "$work/pkg" "$kdir/pkg"
    rm -rf "$work"
    trap - EXIT
    # Other kernel versions are stale once linux-image-amd64 points elsewhere.
    for old in "$cache"/*/; do
        old=${old%/}
        if [ "$old" != "$kdir" ] && [ -f "$old/pkg/.complete" ]; then
            say "removing old kernel $(basename "$old")"
            rm -rf "$old"
        fi
    done
fi

# The uncompressed vmlinux: qemu boots it through its PVH entry point (the Debian kernel has
# CONFIG_PVH=y), skipping the bzImage's real-mode set-up and self-decompression under TCG.
# The bzImage carries the kernel as an xz (or zstd) stream; find its magic and unpack it.
vmlinuz=$(ls "$kdir"/pkg/boot/vmlinuz-* | head -n1)
if [ ! -f "$kdir/vmlinux" ] && [ ! -f "$kdir/vmlinux.none" ] && grep -q '^CONFIG_PVH=y' "$kdir"/pkg/boot/config-*; then
    say "extracting vmlinux from $(basename "$vmlinuz")"
    found=0
    for magic in xz zstd; do
        case $magic in
            xz)   pattern='\xFD7zXZ\x00'; unpack='xz -dc --single-stream' ;;
            zstd) pattern='\x28\xB5\x2F\xFD'; unpack='zstd -dcq'; command -v zstd >/dev/null || continue ;;
        esac
        for off in $(LC_ALL=C grep -obUaP "$pattern" "$vmlinuz" | cut -d: -f1); do
            # (the unpacker stops at the end of the stream: read from a process substitution,
            # so tail's SIGPIPE doesn't fail the pipeline under pipefail)
            if $unpack < <(tail -c +$((off + 1)) "$vmlinuz" 2>/dev/null) > "$kdir/vmlinux.tmp" 2>/dev/null \
               && [ "$(head -c 4 "$kdir/vmlinux.tmp" | od -An -c | tr -d ' ')" = '177ELF' ]; then
                mv "$kdir/vmlinux.tmp" "$kdir/vmlinux"
                found=1
                break 2
            fi
        done
    done
    rm -f "$kdir/vmlinux.tmp"
    if [ $found = 0 ]; then
        say "no vmlinux found in the bzImage; run.sh boots the bzImage"
        touch "$kdir/vmlinux.none"
    fi
fi

# The initramfs, rebuilt when its sources change.
sources_sum=$(cat "$here/init" "$here/build-initramfs.sh" | sha256sum | cut -d' ' -f1)
if [ ! -f "$kdir/initrd.cpio" ] || [ "$(cat "$kdir/initrd.sum" 2>/dev/null)" != "$sources_sum" ]; then
    say "building the initramfs $kdir/initrd.cpio"
    "$here/build-initramfs.sh" "$kdir/pkg" "$kver" "$kdir/initrd.cpio"
    echo "$sources_sum" > "$kdir/initrd.sum"
fi

if [ "$(cat "$cache/current" 2>/dev/null)" != "$kver" ]; then
    echo "$kver" > "$cache/current"
    say "ready: kernel $kver in $kdir"
fi
