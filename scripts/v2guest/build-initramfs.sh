#!/usr/bin/env bash
# Build the v2 guest's initramfs: the static busybox, the kernel modules needed to reach the
# host's root (virtio PCI, 9p, overlay, virtio-serial, virtio-rng) and scripts/v2guest/init.
#   build-initramfs.sh PKGDIR KERNEL-VERSION OUT.cpio
# PKGDIR is the unpacked kernel package with a depmod index (provision.sh makes both). The
# load order is resolved here, at build time, by kmod (`modprobe --show-depends`, which
# follows each module's depends=), so the guest's init only runs insmod in a fixed order.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pkgdir=$(cd "$1" && pwd)
kver=$2
out=$3
modules=(virtio_pci 9pnet_virtio 9p overlay virtio_console virtio_rng)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,lower,rw,newroot,lib/modules,etc/v2guest}

cp /bin/busybox "$stage/bin/busybox"
for applet in $("$stage/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$stage/bin/$applet"
done

# Each module with everything it depends on, dependencies first, once.
: > "$stage/etc/v2guest/modules"
for m in "${modules[@]}"; do
    modprobe -d "$pkgdir" -S "$kver" --show-depends "$m" | while read -r verb path _; do
        [ "$verb" = insmod ] || continue          # "builtin NAME": nothing to load
        name=$(basename "$path")
        if ! grep -qx "$name" "$stage/etc/v2guest/modules"; then
            cp "$path" "$stage/lib/modules/$name"
            echo "$name" >> "$stage/etc/v2guest/modules"
        fi
    done
done

echo "$kver" > "$stage/etc/v2guest/kernel"
# The full module tree, as the guest sees it through the 9p share of the host's root: init
# links /lib/modules/<ver> to it so modprobe in the guest works as on a real VM.
echo "$pkgdir/lib/modules/$kver" > "$stage/etc/v2guest/modules-dir"
cp "$here/init" "$stage/init"
chmod 755 "$stage/init"

# Uncompressed: under TCG, unpacking a compressed initramfs costs more than reading it.
(cd "$stage" && find . | LC_ALL=C sort | busybox cpio -o -H newc -R 0:0 2>/dev/null) > "$out.tmp"
mv "$out.tmp" "$out"
