"""Disks that hold more than the ESP, in one guest (tests/vm/test_shared_disks.py, issue 25).

Four small disks: A and B each hold a ZFS pool's partition stand-in (partition 2, type BF00, data
esp-mirror cannot read, not mounted); C and D each hold a member of an md RAID1 data array on
partition 2 (running, not mounted). ``esp-mirror apply`` on each pair adds partition 1 at 1 MiB,
and every byte of each partition 2 (its sha256) and its GPT entry stay as they were. Then five
refusals on C and D, each one line with exit 2 and every byte of the disks as before: ESP
partitions of two sizes, no room at 1 MiB, an ESP partition with files given to apply, ``--wipe``
while partition 2 is mounted, and image files without ``--target``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from ci.installed import parse_sections
from ci.vm import Assets, GuestResult, blank_disk, fresh_vars, run_in_guest
from ci.vm.scripts import esp_mirror_cli

DISK_MIB = 256
ESP = "64M"  # FAT32 needs 33 MiB with 512-byte sectors; small, so the resync is quick
P2_START = 80 * 2048  # sectors: partition 2 from 80 MiB to the end, room for the ESP at 1 MiB
SECTION = "@@@ "
REFUSALS = ("sizes", "no-room", "files", "wipe-mounted", "images")


def script(efi: Path) -> str:
    cli = shlex.quote(str(esp_mirror_cli()))
    apply = f"{cli} apply --yes --profile debian --bootloader efi --efi-image {efi} --initramfs skip --no-nvram"
    return f"""
set -u
mkdir -p /tmp/t/etc /tmp/t/usr/sbin
cp /usr/sbin/mdadm /tmp/t/usr/sbin/  # the target has mdadm, which apply asks of an installed system
section() {{ echo "{SECTION}$1"; }}
p2() {{ for d in "$@"; do sha256sum /dev/${{d}}2 | cut -d' ' -f1; sgdisk -i 2 /dev/$d | grep -v '^Partition size'; done; }}
node() {{ i=0; until [ -e "$1" ] || [ $i -ge 50 ]; do sleep 0.1; i=$((i+1)); done; }}
# A and B: a ZFS pool's partition stand-in, data esp-mirror cannot read
for d in vda vdb; do
    sgdisk -n 2:{P2_START}:0 -t 2:BF00 -c 2:zfs /dev/$d >/dev/null; node /dev/${{d}}2
    head -c 8388608 /dev/urandom > /dev/${{d}}2
done
# C and D: an md RAID1 data array on partition 2, running, not mounted
for d in vdc vdd; do sgdisk -n 2:{P2_START}:0 -t 2:FD00 -c 2:data /dev/$d >/dev/null; node /dev/${{d}}2; done
mdadm --create /dev/md/data --run --level=1 --raid-devices=2 --metadata=1.2 --homehost=any --name=data \\
      --assume-clean /dev/vdc2 /dev/vdd2 2>/dev/null
head -c 8388608 /dev/urandom > /dev/md/data; sync; mdadm --wait-clean /dev/md/data
for pair in "vda vdb" "vdc vdd"; do
    set -- $pair
    section "before $1"; p2 "$@"
    section "apply $1"; {apply} --esp-size {ESP} --target /tmp/t --disk /dev/$1 --disk /dev/$2 2>&1; echo "exit $?"
    mdadm --wait-clean /dev/md/data 2>/dev/null
    section "after $1"; p2 "$@"
    section "table $1"; sgdisk -p /dev/$1 | tail -n 3
    umount /tmp/t/boot/efi; mdadm --stop /dev/md/esp >/dev/null 2>&1
    rm -f /dev/md/esp  # no udev in the guest to remove the link mdadm made
    rm -rf /tmp/t/boot /tmp/t/etc/*
done
mdadm --stop /dev/md/data >/dev/null
refuse() {{  # NAME ARGS...: apply, its exit code and one line, and whether C and D are as they were
    name=$1; shift
    before=$(sha256sum /dev/vdc /dev/vdd)
    section "refuse $name"; {apply} "$@" 2>&1; echo "exit $?"
    [ "$before" = "$(sha256sum /dev/vdc /dev/vdd)" ] && echo unchanged || echo CHANGED
}}
fresh() {{  # blank disks: the partitions' signatures first (a FAT, md's superblock at the end), then the table
    for d in vdc vdd; do
        for p in /dev/$d[0-9]*; do [ -b "$p" ] && wipefs -qa "$p"; done
        sgdisk --zap-all /dev/$d >/dev/null 2>&1; wipefs -qa /dev/$d; partx -d /dev/$d 2>/dev/null
    done
}}
fresh; sgdisk -n 1:2048:+64M -t 1:EF00 /dev/vdc >/dev/null; sgdisk -n 1:2048:+48M -t 1:EF00 /dev/vdd >/dev/null
refuse sizes --target /tmp/t --disk /dev/vdc --disk /dev/vdd
fresh; for d in vdc vdd; do sgdisk -n 1:2048:+40M -t 1:8300 /dev/$d >/dev/null; done
refuse no-room --esp-size {ESP} --target /tmp/t --disk /dev/vdc --disk /dev/vdd
fresh; for d in vdc vdd; do
    sgdisk -n 1:2048:+64M -t 1:EF00 /dev/$d >/dev/null; node /dev/${{d}}1
    mkfs.vfat -F 32 /dev/${{d}}1 >/dev/null; MTOOLS_SKIP_CHECK=1 mcopy -i /dev/${{d}}1 /etc/hostname ::/grub.cfg
done
refuse files --target /tmp/t --disk /dev/vdc --disk /dev/vdd
fresh; for d in vdc vdd; do sgdisk -n 2:{P2_START}:0 -t 2:8300 /dev/$d >/dev/null; node /dev/${{d}}2; done
mkfs.ext4 -q -F /dev/vdc2; mkdir -p /mnt/p2; mount /dev/vdc2 /mnt/p2
refuse wipe-mounted --wipe --esp-size {ESP} --target /tmp/t --disk /dev/vdc --disk /dev/vdd
umount /mnt/p2
truncate -s 256M /tmp/a.img /tmp/b.img
before=$(sha256sum /tmp/a.img /tmp/b.img)
section "refuse images"; {apply} --esp-size {ESP} --disk /tmp/a.img --disk /tmp/b.img 2>&1; echo "exit $?"
[ "$before" = "$(sha256sum /tmp/a.img /tmp/b.img)" ] && echo unchanged || echo CHANGED
"""


@dataclass(frozen=True)
class SharedDisks:
    guest: GuestResult
    sections: dict[str, str]
    disks: list[Path]


def run(workdir: Path, efi: Path, *, assets: Assets) -> SharedDisks:
    disks = [blank_disk(workdir / f"shared-{n}.img", DISK_MIB) for n in "abcd"]
    nvram = fresh_vars(workdir / "shared-vars.fd", assets)
    guest = run_in_guest(script(efi), disks, nvram, timeout=900, assets=assets, log_dir=workdir)
    sections, _ = parse_sections(guest.stdout)
    return SharedDisks(guest, sections, disks)
