"""A member that comes back heals itself: ``esp-mirror heal`` at boot and on hot-plug.

md keeps a member that missed writes out of the array when it returns ("kicking non-fresh",
md.c), and mdadm's incremental assembly re-adds it only with a write-intent bitmap, which a
small ESP does not get (mdadm.conf(5), mdadm(8)). So the installed system runs ``esp-mirror heal``:
at boot, and where udev and systemd run, whenever a partition whose md superblock carries the
ESP array's UUID appears. heal itself decides, from the superblocks, what it may do (only our
array's members, never one with newer writes than the array, see :mod:`esp_mirror_plugin.upkeep.heal`).

systemd: ``esp-mirror-heal.service`` runs once per boot after the local file systems, without
holding up multi-user.target (DefaultDependencies=no); a udev rule starts
``esp-mirror-heal@<partition>.service`` for each such partition that appears, ordered after it.
OpenRC: a ``local.d`` script of the "local" service. runit (Void): a line in /etc/rc.local. The
last two heal at boot only: hot-plug needs someone to run ``esp-mirror heal``.
"""

from __future__ import annotations

import os

from esp_mirror_plugin.pipeline.kinds import Init
from esp_mirror_plugin.pipeline.profiles import Profile
from esp_mirror_plugin.pipeline.steps import Command, EditBlock, RemoveBlock, Step, WriteFile
from esp_mirror_plugin.system.target import Target

PROGRAM = "/usr/local/sbin/esp-mirror"
RECORD = "/etc/esp-mirror/esp-mirror.yaml"
UDEV_RULE = "etc/udev/rules.d/65-esp-mirror-heal.rules"
OPENRC_SCRIPT = "etc/local.d/esp-mirror-heal.start"

WANTS_TARGET = "multi-user.target"
WANTS = f"{WANTS_TARGET}.wants"
SERVICE = f"""\
[Unit]
Description=Bring members back into the mirrored EFI System Partition (esp-mirror heal)
Documentation=man:mdadm(8)
DefaultDependencies=no
After=local-fs.target
Before=shutdown.target
Conflicts=shutdown.target
ConditionPathExists={RECORD}

[Service]
Type=oneshot
ExecStart={PROGRAM} heal --why boot --wait 60

[Install]
WantedBy={WANTS_TARGET}
"""

TEMPLATE = f"""\
[Unit]
Description=Bring %I back into the mirrored EFI System Partition (esp-mirror heal)
Documentation=man:mdadm(8)
DefaultDependencies=no
After=local-fs.target esp-mirror-heal.service
Before=shutdown.target
Conflicts=shutdown.target
ConditionPathExists={RECORD}
# at boot every member appears; one that an array already holds needs nothing
ConditionPathExistsGlob=!/sys/class/block/%I/holders/*

[Service]
Type=oneshot
ExecStart={PROGRAM} heal --why hot-plug --device /dev/%I
"""

OPENRC = f"""\
#!/bin/sh
# esp-mirror: bring members back into the mirrored EFI System Partition, in the background.
{PROGRAM} heal --why boot 2>&1 | logger -t esp-mirror-heal &
"""

RC_LOCAL = f"{PROGRAM} heal --why boot 2>&1 | logger -t esp-mirror-heal &"


def udev_rule(array_uuid: str) -> str:
    """The rule for partitions that carry this array's superblock (blkid's ID_FS_UUID of a
    linux_raid_member is the array UUID, dashed)."""
    hexits = array_uuid.replace(":", "").replace("-", "").lower()
    dashed = f"{hexits[:8]}-{hexits[8:12]}-{hexits[12:16]}-{hexits[16:20]}-{hexits[20:]}"
    return (
        "# esp-mirror: a partition that carries a member of the mirrored ESP's array appeared;\n"
        "# esp-mirror heal checks its superblock and re-adds it when it is missing from the array.\n"
        'ACTION=="add", SUBSYSTEM=="block", ENV{DEVTYPE}=="partition", '
        f'ENV{{ID_FS_TYPE}}=="linux_raid_member", ENV{{ID_FS_UUID}}=="{dashed}", '
        'TAG+="systemd", ENV{SYSTEMD_WANTS}+="esp-mirror-heal@%k.service"\n'
    )


def plan(profile: Profile, target: Target, array_uuid: str) -> tuple[tuple[Step, ...], tuple[str, ...]]:
    why = "a member that comes back (stale, or plugged in again) is re-added without anyone"
    if profile.init is Init.SYSTEMD:
        # enabled already (the link systemctl enable makes): a second apply changes nothing
        enabled = os.path.lexists(target.path(f"etc/systemd/system/{WANTS}/esp-mirror-heal.service"))
        enable = Command(("systemctl", "enable", "esp-mirror-heal.service"), root=target.root, why=why + " (at boot)")
        return (
            WriteFile(target.path("etc/systemd/system/esp-mirror-heal.service"), SERVICE, why=why, root=target.root),
            WriteFile(target.path("etc/systemd/system/esp-mirror-heal@.service"), TEMPLATE, why=why, root=target.root),
            WriteFile(
                target.path(UDEV_RULE),
                udev_rule(array_uuid),
                why=why + " (hot-plug)",
                root=target.root,
            ),
            *(() if enabled else (enable,)),
        ), ()
    later = (
        f"on hot-plug: {profile.init} has no udev-to-service hook here, so run `esp-mirror heal` "
        "after plugging a disk in"
    )
    if profile.init is Init.OPENRC:
        return (
            WriteFile(target.path(OPENRC_SCRIPT), OPENRC, mode=0o755, why=why, root=target.root),
            Command(("rc-update", "add", "local", "default"), root=target.root, why="runs /etc/local.d at boot"),
        ), (f"heal runs at boot; {later}",)
    return (EditBlock(target.path("etc/rc.local"), RC_LOCAL, mode=0o755, why=why + " (at boot)", root=target.root),), (
        f"heal runs at boot; {later}",
    )


def removal(profile: Profile, target: Target) -> tuple[Step, ...]:
    """What :func:`plan` installed, taken away (``esp-mirror release --all``): heal's units
    disabled and removed, the udev rule, the OpenRC script or the rc.local block. Only what is
    there is planned, so a run again after an interruption plans what is left."""
    why = "no mirror is left for heal to bring members back into"
    steps: list[Step] = []
    if profile.init is Init.SYSTEMD:
        if os.path.lexists(target.path(f"etc/systemd/system/{WANTS}/esp-mirror-heal.service")):
            steps.append(
                Command(("systemctl", "disable", "esp-mirror-heal.service"), root=target.root, why=why + " (at boot)")
            )
        files = ("etc/systemd/system/esp-mirror-heal.service", "etc/systemd/system/esp-mirror-heal@.service")
        steps += [Command(("rm", "-f", "--", p), why=why) for p in target.present(*files, UDEV_RULE)]
    elif profile.init is Init.OPENRC:
        steps += [Command(("rm", "-f", "--", p), why=why) for p in target.present(OPENRC_SCRIPT)]
    elif target.has_block("etc/rc.local"):
        steps.append(RemoveBlock(target.path("etc/rc.local"), why=why + " (at boot)", root=target.root))
    return tuple(steps)
