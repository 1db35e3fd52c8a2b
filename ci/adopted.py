"""The adoption of an installed Debian's ESP, from the booted system (tests/vm/test_adopt.py).

The machine is what Debian's installer leaves with a RAID1 root on two disks: disk A has the ESP
(partition 1, made and filled by Debian's own ``grub-install``, which also made the "debian"
firmware entry; fstab mounts it by its FAT UUID) and partition 2, a member of the md RAID1 root;
disk B has only partition 2 (the installer left the room at 1 MiB free). No esp-mirror. The
administrator copies the single-file esp-mirror to /root and runs ``esp-mirror adopt`` on the
running system (ci/installed.py's test unit, action "adopt"); then the firmware boots each disk
alone.

Built in a guest from the cached initramfs-tools root, split into the same two archives as the
README installer's (ci/readme_installer.py).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from ci.installed import ROOT_FS_UUID, ROOT_FSTAB_LINE, Installed, parse_sections
from ci.readme_installer import SystemArchives
from ci.vm import Assets, blank_disk, run_in_guest

DISK_MIB = 2048
LABEL = "EFI_SYSPART"  # the FAT label, as OVHcloud's installs have it: the mirror keeps it
# Files of the ESP besides GRUB's, which nothing rewrites: they must be on every member byte for byte.
EXTRA_FILES = ("EFI/Dell/diag.bin", "EFI/debian/BOOT.CSV")

INSTALL = r"""
set -eu
phase() {{ echo "@@@ phase $1 $(cut -d' ' -f1 /proc/uptime)"; }}
phase partitions
sgdisk --new=1:2048:+512M --typecode=1:EF00 --change-name=1:"EFI System Partition" \
       --new=2:0:0 --typecode=2:FD00 --change-name=2:root /dev/vda >/dev/null
# disk B: the root's member at the same place; the room of A's ESP is left free
sgdisk --new=2:$((2048 + 512 * 2048)):0 --typecode=2:FD00 --change-name=2:root /dev/vdb >/dev/null
for p in vda1 vda2 vdb2; do i=0; until [ -e /dev/$p ] || [ $i -ge 50 ]; do sleep 0.1; i=$((i+1)); done; done
mdadm --create /dev/md/root --run --level=1 --raid-devices=2 --metadata=1.2 --homehost=any --name=root \
      --assume-clean /dev/vda2 /dev/vdb2
mkfs.ext4 -q -F -U {root_uuid} -L root /dev/md/root
mkdir -p /target && mount /dev/md/root /target
phase system
tar -x -f /dev/vdc -C /target && tar -x -f /dev/vdd -C /target
phase esp
mkfs.vfat -F 32 -n {label} /dev/vda1 >/dev/null
mkdir -p /target/boot/efi && mount /dev/vda1 /target/boot/efi
printf '%s\n' {root_line} "UUID=$(blkid -s UUID -o value /dev/vda1)  /boot/efi  vfat  umask=0077  0  1" > /target/etc/fstab
mdadm --detail --brief /dev/md/root >> /target/etc/mdadm/mdadm.conf
for fs in dev proc sys; do mount --rbind /$fs /target/$fs; done
mkdir -p /dev/disk/by-uuid && ln -sf "$(readlink -f /dev/md/root)" /dev/disk/by-uuid/{root_uuid}
phase grub
# Debian's own grub-install, as its installer runs it: into \EFI\debian\ and a "debian" entry in NVRAM
chroot /target grub-install --target=x86_64-efi --efi-directory=/boot/efi --bootloader-id=debian 2>&1
chroot /target update-grub 2>&1
phase files
mkdir -p /target/boot/efi/EFI/Dell
head -c 1048576 /dev/urandom > /target/boot/efi/EFI/Dell/diag.bin
printf 'grubx64.efi,debian,,This is the boot entry for debian\n' > /target/boot/efi/EFI/debian/BOOT.CSV
(cd /target/boot/efi && find . -type f -exec sha256sum {{}} +) > /target/root/esp-before.sha256
(cd /target/boot/efi && sha256sum {extra}) > /target/root/esp-extra.sha256
cp {zipapp} /target/root/esp-mirror && chmod 755 /target/root/esp-mirror
cp {second_kernel} /target/root/  # installed with apt later, from a login and from a clean chroot
echo '@@@ efibootmgr'; efibootmgr -v
echo '@@@ fstab'; cat /target/etc/fstab
echo '@@@ esp-files'; cat /target/root/esp-before.sha256
echo '@@@ gpt'; for d in vda vdb; do sfdisk --json /dev/$d; done
phase unmount
umount -R /target/dev /target/proc /target/sys 2>/dev/null || umount -l /target/dev /target/proc /target/sys
umount /target/boot/efi && umount /target && mdadm --stop /dev/md/root && sync
phase end
"""


@dataclass(frozen=True)
class Machine:
    disks: list[Path]  # disk-a.img, disk-b.img
    nvram: Path  # with Debian's "debian" entry, as its installer left it
    result: Installed


def install(
    workdir: Path, archives: SystemArchives, zipapp: Path, second_kernel: Path, vars_file: Path, *, assets: Assets
) -> Machine:
    """Set the machine up in a guest: Debian on a RAID1 root, the ESP on disk A only, in /root the
    single-file esp-mirror and ``second_kernel``, a kernel package's .deb (the tests install it)."""
    disks = [blank_disk(workdir / f"disk-{name}.img", DISK_MIB) for name in "ab"]
    script = INSTALL.format(
        root_uuid=ROOT_FS_UUID,
        label=LABEL,
        root_line=shlex.quote(ROOT_FSTAB_LINE.rstrip("\n")),
        extra=" ".join(shlex.quote(f"./{f}") for f in EXTRA_FILES),
        zipapp=shlex.quote(str(zipapp)),
        second_kernel=shlex.quote(str(second_kernel)),
    )
    guest = run_in_guest(
        script, [*disks, archives.base, archives.kernel_and_mdadm], vars_file, timeout=900, assets=assets,
        log_dir=workdir,
    )  # fmt: skip
    sections, phases = parse_sections(guest.stdout)
    return Machine(disks, vars_file, Installed(guest, sections, phases))
