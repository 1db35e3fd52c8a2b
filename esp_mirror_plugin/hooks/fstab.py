"""The ESP's line in the target's /etc/fstab.

It mounts by ``UUID=`` of the FAT on the array, not by /dev/md/<name>: the UUID is what
distributions write for an ESP and what their tools look for, it survives the array's kernel name
changing (md127 vs md/esp), and it can only ever match the array: blkid reports each member as
``linux_raid_member`` (checked in the VM tests), so a member is never mounted by mistake.
``nofail`` plus a device timeout above mdadm-last-resort's 30 s lets a degraded boot go on.
``umask=0077`` keeps the ESP private (bootctl warns about a world-readable random seed).
"""

from __future__ import annotations

import os

from esp_mirror_plugin.pipeline.fat import MOUNT_OPTIONS

OPTIONS = f"{MOUNT_OPTIONS},nofail,x-systemd.device-timeout=45s"


def line(fs_uuid: str, mountpoint: str) -> str:
    return f"UUID={fs_uuid}\t{mountpoint}\tvfat\t{OPTIONS}\t0\t2"


def plain_line(fs_uuid: str, mountpoint: str) -> str:
    """The line of a plain ESP (a partition, no array), left as the file's own once the mirror is
    undone (``esp-mirror release --all``): ``nofail`` still, since the other disks keep entries
    that start their own copies of the ESP, and a boot from one of them must not stop for this."""
    return f"UUID={fs_uuid}\t{mountpoint}\tvfat\t{MOUNT_OPTIONS},nofail\t0\t2"


def conflicting_lines(fstab: str, mountpoint: str) -> list[str]:
    """Lines (of a file without our block) that mount something at the ESP mount point."""
    out = []
    for raw in fstab.splitlines():
        fields = raw.split()
        if len(fields) < 2 or fields[0].startswith("#"):
            continue
        if os.path.normpath(fields[1]) == os.path.normpath(mountpoint):
            out.append(raw.strip())
    return out
