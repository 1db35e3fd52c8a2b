"""Drive esp-mirror's hooks on the host the way an installer does, against a real target root.

The host has no md driver and no vfat, so the disk-phase hooks cannot run here for real. What an
installer's later phases see can: ``prepare`` on disk image files (discovery works on them), the
files ``post_format`` writes into the target (the ARRAY line in mdadm.conf, the fstab line), and
``initramfs_config`` with the target's real generator in a chroot.

* :class:`FileStepsOnly` carries out only a hook's file edits (no mdadm, mkfs or mount), so the
  target gets exactly the mdadm.conf and fstab that ``post_format`` would write.
* :class:`CountingRunner` runs every command for real (through esp-mirror's own ShRunner) and
  counts and times the ones that are the profile's regeneration command.
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ci.vm.images import blank_disk
from esp_mirror_plugin import host
from esp_mirror_plugin.pipeline.bootloaders import spec
from esp_mirror_plugin.pipeline.context import Context, prepare
from esp_mirror_plugin.pipeline.execute import Applier
from esp_mirror_plugin.pipeline.kinds import BootloaderKind, InitramfsMode
from esp_mirror_plugin.pipeline.preflight import Preflight
from esp_mirror_plugin.pipeline.profiles import load_profile
from esp_mirror_plugin.pipeline.request import Request
from esp_mirror_plugin.pipeline.steps import Command, EditBlock, Group, MakeDir, WriteFile
from esp_mirror_plugin.system.runner import Result, Runner, ShRunner, full_argv


class FilesOnlyPreflight(Preflight):
    """For another distribution's profile on a Debian root: the file steps are checked as always,
    the commands (that distribution's programs and units) are not."""

    def _command(self, step: Command) -> None:
        pass


def regeneration_matches(argv: Sequence[str], template: Sequence[str]) -> bool:
    """True when ``argv`` is the profile's regenerate argv (``{kver}`` stands for any kernel)."""
    return len(argv) == len(template) and all(a == t or "{kver}" in t for a, t in zip(argv, template, strict=False))


@dataclass
class CountingRunner:
    """A runner that runs for real and counts the regeneration commands it was given."""

    regenerate: tuple[str, ...]  # the profile's argv, e.g. ("update-initramfs", "-u", "-k", "all")
    inner: Runner = field(default_factory=ShRunner)
    regenerations: list[tuple[tuple[str, ...], float, Result]] = field(default_factory=list)
    commands: list[tuple[str, ...]] = field(default_factory=list)

    def run(
        self,
        argv: Sequence[str],
        *,
        root: str = "/",
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        ok: Sequence[int] = (0,),
    ) -> Result:
        started = time.monotonic()
        result = self.inner.run(argv, root=root, env=env, timeout=timeout, ok=ok)
        self.commands.append(full_argv(argv, root))
        if regeneration_matches(tuple(argv), self.regenerate):
            self.regenerations.append((full_argv(argv, root), time.monotonic() - started, result))
        return result

    def which(self, tool: str, root: str = "/") -> str | None:
        return self.inner.which(tool, root)

    @property
    def count(self) -> int:
        return len(self.regenerations)

    @property
    def seconds(self) -> float:
        return sum(seconds for _, seconds, _ in self.regenerations)


@dataclass
class FileStepsOnly:
    """An executor that carries out only a hook's file steps (edits, drop-ins, directories).

    For ``post_format`` on a host without md: mdadm.conf gets its ARRAY line and fstab its ESP
    line exactly as apply writes them, while the array itself is never created.
    """

    applier: Applier
    skipped: list[str] = field(default_factory=list)

    def execute(self, group: Group) -> None:
        files = tuple(s for s in group.steps if isinstance(s, (EditBlock, WriteFile, MakeDir)))
        self.skipped += [s.describe().splitlines()[0] for s in group.steps if s not in files]
        self.applier.execute(Group(group.name, files, group.notes))


@dataclass
class HostInstall:
    """esp-mirror prepared for a target root on two image-file disks; hooks are called one by one."""

    ctx: Context
    runner: CountingRunner
    log: io.StringIO

    def post_format_files(self) -> FileStepsOnly:
        executor = FileStepsOnly(Applier(self.runner, self.log))
        self.ctx.executor = executor
        host.call_hook(host.get_plugin_manager(), "post_format", self.ctx)
        return executor

    def bootloader(self) -> Applier:
        applier = Applier(self.runner, self.log)
        self.ctx.executor = applier
        host.call_hook(host.get_plugin_manager(), "bootloader", self.ctx)
        return applier

    def initramfs_config(self) -> Applier:
        applier = Applier(self.runner, self.log)
        self.ctx.executor = applier
        host.call_hook(host.get_plugin_manager(), "initramfs_config", self.ctx)
        return applier


def prepare_on_images(
    profile: str,
    target: Path,
    workdir: Path,
    *,
    initramfs: InitramfsMode = InitramfsMode.REGENERATE,
    regenerate: tuple[str, ...] | None = None,
    foreign: bool = False,
    bootloader: BootloaderKind = BootloaderKind.EFI,
    efi_image: Path | None = None,
) -> HostInstall:
    """Prepare esp-mirror as an installer would, with two blank image files as the disks.

    The bootloader defaults to a plain EFI image (a placeholder file, for runs that stop before
    the bootloader hook, so that a target root needs no bootloader). ``foreign`` is for another
    distribution's profile on a Debian root (or on a target of config files only): its files are
    checked as always, its programs and units (raid-check.timer, rc-update) are not looked for.
    """
    disks = [blank_disk(workdir / f"disk-{name}.img", 1024) for name in "ab"]
    image = efi_image
    if image is None:
        image = workdir / "placeholder.efi"
        image.write_bytes(b"MZ")
    template = regenerate or load_profile(profile).initramfs.regenerate
    runner = CountingRunner(tuple(template))
    request = Request(
        disks=tuple(str(d) for d in disks),
        profile=profile,
        target=str(target),
        bootloader=bootloader,
        efi_image=str(image) if spec(bootloader).needs_image else None,
        initramfs=initramfs,
    )
    ctx = prepare(request, runner=runner)
    if foreign:
        ctx.preflight = FilesOnlyPreflight(runner, ctx.profile.install_hint)
    return HostInstall(ctx, runner, io.StringIO())
