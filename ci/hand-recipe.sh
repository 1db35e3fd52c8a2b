#!/bin/sh
# The hand-written way to do what esp-mirror does (the benchmark baseline):
# one ESP per disk, mirrored by md RAID1 with metadata 1.0 (FAT at offset 0 of every member),
# the EFI image at \EFI\esp-mirror\payload.efi and \EFI\BOOT\BOOTX64.EFI, and one firmware
# boot entry per disk, in disk order.
# Usage: hand-recipe.sh EFI_IMAGE DISK DISK...   (destroys every DISK)
set -eu
[ $# -ge 3 ] || { echo "usage: $0 EFI_IMAGE DISK DISK..." >&2; exit 2; }
image=$1; shift

part_of() { case $1 in *[0-9]) echo "${1}p1" ;; *) echo "${1}1" ;; esac; }

parts=
for disk in "$@"; do
    sgdisk --zap-all "$disk" >/dev/null
    sgdisk --new=1:2048:+512M --typecode=1:EF00 --change-name=1:ESP "$disk" >/dev/null
    part=$(part_of "$disk")
    # No udev: the kernel makes the node when sgdisk asks it to re-read the table; wait for it.
    tries=50
    until [ -b "$part" ]; do
        tries=$((tries - 1))
        [ $tries -gt 0 ] || { echo "$part did not appear after partitioning $disk" >&2; exit 1; }
        sleep 0.1
    done
    parts="$parts $part"
done

# shellcheck disable=SC2086 # $parts is a list of device paths
mdadm --create /dev/md/esp --run --level=1 --raid-devices=$# --metadata=1.0 \
    --homehost=any --name=esp $parts
mkfs.vfat -F 32 -n ESP /dev/md/esp >/dev/null
mnt=$(mktemp -d)
mount -t vfat /dev/md/esp "$mnt"
mkdir -p "$mnt/EFI/esp-mirror" "$mnt/EFI/BOOT"
cp "$image" "$mnt/EFI/esp-mirror/payload.efi"
cp "$image" "$mnt/EFI/BOOT/BOOTX64.EFI"
umount "$mnt"
rmdir "$mnt"
mdadm --wait /dev/md/esp || true  # exits 1 when there was nothing to wait for

# efibootmgr --create puts the new entry first: create in reverse so the first disk is first.
reversed=
for disk in "$@"; do reversed="$disk $reversed"; done
for disk in $reversed; do
    efibootmgr --quiet --create --disk "$disk" --part 1 --label "hand recipe ($disk)" \
        --loader '\EFI\esp-mirror\payload.efi'
done
