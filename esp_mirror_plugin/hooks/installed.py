"""The installed system keeps the mirror whole on its own: the group "installed-system".

Planned by the bootloader hook, last, when the target is fully installed (an installer has put
the base system, the kernel, mdadm, Python and the bootloader packages there by then):

- esp-mirror itself at /usr/local/sbin/esp-mirror: one zip application of this very version
  (:mod:`esp_mirror_plugin.system.zipapp`), run by the target's python3, its manual page
  esp-mirror(8) at /usr/local/share/man/man8 (:mod:`esp_mirror_plugin.man`) and its bash
  completion at /usr/local/share/bash-completion/completions (:mod:`esp_mirror_plugin.completion`).
  Without a usable Python the plan says that upkeep runs from outside (a chroot from a rescue
  system), and a profile whose periodic check is esp-mirror's own refuses: that check would
  fail every week.
- md assembly at boot, where the init needs it enabled (OpenRC);
- the weekly check and the refresh of the metrics every few minutes (:mod:`.periodic`);
- heal at boot and on hot-plug (:mod:`.heal`);
- the settings package upgrades read (:mod:`.upgrades`), and what makes every path that writes
  to the ESP find it whoever runs it, or stop loudly (:mod:`.anycaller`).

``esp-mirror refresh`` plans this same group on the running system from what apply recorded,
``status`` reports when a file of it differs from what it would write, and ``esp-mirror release
--all`` takes it away (:func:`removal`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from esp_mirror_plugin import __version__, completion, man
from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.hooks import anycaller, heal, periodic, upgrades
from esp_mirror_plugin.pipeline.bootloaders import spec
from esp_mirror_plugin.pipeline.kinds import BootloaderKind, Init, OwnCheck
from esp_mirror_plugin.pipeline.profiles import Profile
from esp_mirror_plugin.pipeline.steps import Command, InstallProgram, Step
from esp_mirror_plugin.system import zipapp
from esp_mirror_plugin.system.target import Target

GROUP = "installed-system"
MANUAL = f"/usr/local/share/man/man8/{man.FILE}"  # /usr/local/share/man: in man-db's manpath.config everywhere
# bash-completion loads a command's completion from bash-completion/completions/<command> under
# each directory of XDG_DATA_DIRS, /usr/local/share first by default
COMPLETION = f"/usr/local/share/bash-completion/completions/{completion.FILE}"
# what the installed esp-mirror runs: status and heal (mdadm, blkid), check (mdir, mcopy), repair
# (fsck.fat, wipefs), replace and add (sgdisk, partx), entries (efibootmgr), release (fatlabel)
UPKEEP_PROGRAMS = (
    "mdadm",
    "blkid",
    "mdir",
    "mcopy",
    "fsck.fat",
    "wipefs",
    "sgdisk",
    "partx",
    "efibootmgr",
    "fatlabel",
)


@dataclass(frozen=True)
class Setup:
    """What the group is planned from: apply's request, or refresh's record of it."""

    profile: Profile
    target: Target
    array_uuid: str  # mdadm form
    mountpoint: str
    bootloader: BootloaderKind
    loader_id: str  # \EFI\<loader_id>\ holds the loader the boot entries start
    metrics_dir: str  # the node_exporter textfile directory the weekly check writes to, when it exists
    device: str  # /dev/md/<name>
    fs_uuid: str  # the FAT's on the array (XXXX-XXXX): what is mounted at the mount point


def puts_esp_mirror(target: Target) -> bool:
    """Does this group put esp-mirror on the installed system? Only where a usable python3 runs
    it: the plan's words about running esp-mirror there depend on this."""
    python = target.python()
    return python is not None and python.usable


def program_step(target: Target) -> InstallProgram:
    app = zipapp.build()
    return InstallProgram(
        target.path(heal.PROGRAM),
        app.data,
        app.summary(),
        why="esp-mirror on the installed system: status, check, repair, replace, heal, refresh",
        root=target.root,
    )


def manual_step(target: Target) -> InstallProgram:
    """The manual page of the installed esp-mirror, the one this esp-mirror carries."""
    return InstallProgram(
        target.path(MANUAL),
        man.page(),
        f"the manual page esp-mirror(8) (esp-mirror {__version__})",
        why="`man esp-mirror` on the installed system: its commands, exit status and files",
        mode=0o644,
        root=target.root,
    )


def completion_step(target: Target) -> InstallProgram:
    """The bash completion of the installed esp-mirror, the one this esp-mirror carries."""
    return InstallProgram(
        target.path(COMPLETION),
        completion.script(),
        f"the bash completion of esp-mirror (esp-mirror {__version__})",
        why="esp-mirror's commands, options and their values complete in bash on the installed system",
        mode=0o644,
        root=target.root,
    )


def plan(setup: Setup) -> tuple[tuple[Step, ...], tuple[str, ...]]:
    """(steps, notes) of the group.

    :raises BadInput: no usable Python where the profile's own periodic check needs it, an
        unwritable debconf database, a conflicting fwupd setting.
    """
    profile, target = setup.profile, setup.target
    steps: list[Step] = []
    notes: list[str] = []
    python = target.python()
    usable = puts_esp_mirror(target)
    if usable:
        steps += [program_step(target), manual_step(target), completion_step(target)]
        missing = [p for p in UPKEEP_PROGRAMS if not target.has_program(p)]
        if missing:
            packages = " ".join(dict.fromkeys(profile.package_for(p) for p in missing))
            notes.append(
                f"the installed esp-mirror needs {', '.join(missing)}, which the target lacks: "
                f"install them (`{' '.join(profile.packages.install)} {packages}`) or its upkeep commands fail"
            )
    else:
        why = python.problem() if python is not None else "the target has no python3"
        if profile.own_check is not OwnCheck.NONE:
            raise BadInput(
                f"{why}, and the {profile.name} profile's weekly check runs esp-mirror there: install "
                f"Python 3.11 or later in the target (`{profile.install_hint('python3')}`) and run again"
            )
        notes.append(
            f"{why}: esp-mirror is not put on the installed system, so nothing heals a member that "
            "comes back, no weekly esp-mirror check compares the members and nothing writes metrics; run status, "
            "check, repair and heal from outside (a rescue system, chroot)"
        )
    steps += [Command(argv, root=target.root, why="assemble md arrays at boot") for argv in profile.boot_assembly]
    periodic_steps, periodic_notes = periodic.plan(profile, target, setup.metrics_dir, usable)
    steps += periodic_steps
    notes += periodic_notes
    if usable:
        heal_steps, heal_notes = heal.plan(profile, target, setup.array_uuid)
        steps += heal_steps
        notes += heal_notes
    upgrade_steps, upgrade_notes = upgrades.plan(
        profile, target, setup.array_uuid, setup.mountpoint, setup.bootloader, setup.loader_id, esp_mirror=usable
    )
    manager = profile.packages.install[0]
    callers = anycaller.plan(
        target, setup.mountpoint, setup.bootloader, setup.fs_uuid, setup.device, manager, esp_mirror=usable
    )
    caller_notes = anycaller.notes(target, setup.mountpoint, setup.bootloader)
    return (*steps, *upgrade_steps, *callers), (*notes, *upgrade_notes, *caller_notes)


SEED_UNITS = ("systemd-boot-random-seed.service", "systemd-boot-system-token.service")


def removal(setup: Setup, device: str, *, running: bool) -> tuple[tuple[Step, ...], tuple[str, ...]]:
    """What the group left on the installed system that expects the mirror, taken away once the
    mirror is undone (``esp-mirror release --all``), as (steps, notes); ``device`` is the
    partition that is the machine's ESP from then on. Callers before what they call: the
    upgrade hooks and bootctl's wrapper (:func:`anycaller.removal`), heal, the periodic check and
    its metrics, the upgrade settings; systemd-boot's random seed writer unmasked (a plain ESP
    may have the seed again); systemd told. esp-mirror itself and its manual page stay (``adopt``
    mirrors the ESP again), and so does md assembly at boot and the distribution's md check
    (other arrays use them). ``running``: systemd runs the target (PID 1 of this very system):
    the timers are stopped too and systemd reloads; without it systemctl only edits the unit
    links (a chroot, a rescue system). Only what is there is planned, so a run again after an
    interruption plans what is left."""
    profile, target = setup.profile, setup.target
    steps: list[Step] = [
        *anycaller.removal(target),
        *heal.removal(profile, target),
        *periodic.removal(profile, target, running=running),
    ]
    upgrade_steps, notes = upgrades.removal(profile, target, device)
    steps += upgrade_steps
    if spec(setup.bootloader).bootctl:
        masked = [u for u in SEED_UNITS if _masked(target.path(f"etc/systemd/system/{u}"))]
        if masked:
            steps.append(
                Command(
                    ("systemctl", "unmask", *masked),
                    root=target.root,
                    why="esp-mirror masked the seed's writer: on a plain ESP it may write the seed again",
                )
            )
    if running and profile.init is Init.SYSTEMD and any(_systemd_changes(s) for s in steps):
        steps.append(Command(("systemctl", "daemon-reload"), root=target.root, why="systemd forgets the removed units"))
    return tuple(steps), (
        *notes,
        f"{heal.PROGRAM} and its manual page stay: `esp-mirror adopt` mirrors the ESP again; remove them by "
        "hand if you will not",
    )


def _masked(path: str) -> bool:
    """The unit file ``path`` is a mask (``systemctl mask``: a link to /dev/null)."""
    return os.path.islink(path) and os.readlink(path) == "/dev/null"


def _systemd_changes(step: Step) -> bool:
    """``step`` changes what systemd has loaded: systemctl, or a file of its configuration removed."""
    if not isinstance(step, Command):
        return False
    return step.argv[0] == "systemctl" or any(isinstance(a, str) and "/systemd/" in a for a in step.argv)
