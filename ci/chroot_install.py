"""A Debian installed the way a server's installer does it, with esp-mirror at chroot time
(tests/vm/test_installed_system.py, issues 25 and 26).

The installer partitions both disks before esp-mirror runs: disk A gets an empty ESP partition
(partition 1, 512 MiB at 1 MiB) and the root's member (partition 2); disk B only the root's
member, with the room of an ESP left free at 1 MiB. It makes an md RAID1 root (metadata 1.2) on
the partitions 2, unpacks Debian onto it (the cached root of ci/roots.py, split into two archives
as ci/readme_installer.py does), then runs ``esp-mirror apply --target /target`` from outside the
chroot, as an installer's last steps do: esp-mirror takes A's ESP partition as it is, adds
partition 1 to B's table, and writes GRUB, its configuration and one boot entry per disk. The
installer runs nothing after it.

What esp-mirror must not touch is read before and after apply: the GPT entries of every
partition there was (type, GUID, name, first and last sector) and the md superblock of the root's
members (array UUID, name, data offset and size). Their bytes are the root's file system, which
apply writes the target's files to (fstab, mdadm.conf, GRUB's modules): the ZFS stand-in of
tests/vm/test_shared_disks.py shows every byte of a partition 2 that nobody writes unchanged.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from ci.installed import ROOT_FS_UUID, ROOT_FSTAB_LINE, Installed, parse_sections
from ci.readme_installer import SystemArchives
from ci.vm import Assets, blank_disk, run_in_guest

DISK_MIB = 2048
ESP_SECTORS = 512 * 2048

INSTALL = r"""
set -eu
phase() {{ echo "@@@ phase $1 $(cut -d' ' -f1 /proc/uptime)"; }}
node() {{ i=0; until [ -e "$1" ] || [ $i -ge 50 ]; do sleep 0.1; i=$((i+1)); done; }}
identity() {{
    for p in "vda 1" "vda 2" "vdb 2"; do set -- $p; echo "$1$2"; sgdisk -i $2 /dev/$1 | grep -v '^Partition size'; done
    for m in vda2 vdb2; do mdadm --examine --export /dev/$m | grep -E '^MD_(UUID|NAME|LEVEL|DEVICES)='; done
    for m in vda2 vdb2; do mdadm --examine /dev/$m | grep -E 'Data Offset|Avail Dev Size|Array Size'; done
}}
phase partitions
sgdisk --new=1:2048:+512M --typecode=1:EF00 --change-name=1:"EFI system partition" \
       --new=2:0:0 --typecode=2:FD00 --change-name=2:root /dev/vda >/dev/null
sgdisk --new=2:{root_start}:0 --typecode=2:FD00 --change-name=2:root /dev/vdb >/dev/null
for p in vda1 vda2 vdb2; do node /dev/$p; done
mdadm --create /dev/md/root --run --level=1 --raid-devices=2 --metadata=1.2 --homehost=any --name=root \
      --assume-clean /dev/vda2 /dev/vdb2
mkfs.ext4 -q -F -U {root_uuid} -L root /dev/md/root
mkdir -p /target && mount /dev/md/root /target
phase system
tar -x -f /dev/vdc -C /target && tar -x -f /dev/vdd -C /target
printf '%s\n' {root_line} > /target/etc/fstab
mdadm --detail --brief /dev/md/root >> /target/etc/mdadm/mdadm.conf
cp {zipapp} /target/root/esp-mirror && chmod 755 /target/root/esp-mirror
sync; mdadm --wait-clean /dev/md/root
phase apply
echo '@@@ before'; identity
echo '@@@ apply'
{cli} apply --yes --profile debian --target /target --disk /dev/vda --disk /dev/vdb --bootloader grub \
      --initramfs configure-only 2>&1
sync; mdadm --wait-clean /dev/md/root
echo '@@@ after'; identity
phase report
echo '@@@ efibootmgr'; efibootmgr -v
echo '@@@ fstab'; cat /target/etc/fstab
echo '@@@ grub.cfg'; grep -E '^\s*(linux|search)\s' /target/boot/grub/grub.cfg | head -n 4
echo '@@@ esp-files'; (cd /target/boot/efi && find . -type f | sort)
echo '@@@ gpt'; for d in vda vdb; do sgdisk -p /dev/$d | tail -n 3; done
phase unmount
umount /target/boot/efi && umount /target && mdadm --stop /dev/md/esp && mdadm --stop /dev/md/root && sync
phase end
"""


@dataclass(frozen=True)
class Machine:
    disks: list[Path]  # disk-a.img, disk-b.img
    nvram: Path  # one entry per disk, as apply left it
    result: Installed


def install(
    workdir: Path,
    archives: SystemArchives,
    zipapp: Path,
    vars_file: Path,
    *,
    assets: Assets,
) -> Machine:
    """Install in a guest: the installer's partitions, Debian on its md root, then esp-mirror apply."""
    disks = [blank_disk(workdir / f"disk-{name}.img", DISK_MIB) for name in "ab"]
    script = INSTALL.format(
        root_start=2048 + ESP_SECTORS,
        root_uuid=ROOT_FS_UUID,
        root_line=shlex.quote(ROOT_FSTAB_LINE.rstrip("\n")),
        zipapp=shlex.quote(str(zipapp)),
        cli=shlex.quote(str(zipapp)),
    )
    guest = run_in_guest(
        script,
        [*disks, archives.base, archives.kernel_and_mdadm],
        vars_file,
        timeout=1200,
        assets=assets,
        log_dir=workdir,
    )
    sections, phases = parse_sections(guest.stdout)
    return Machine(disks, vars_file, Installed(guest, sections, phases))
