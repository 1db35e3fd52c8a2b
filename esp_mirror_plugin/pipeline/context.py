"""The one argument every hook receives: request, profile, machine snapshot, layout, runner,
executor, the target as it is when a hook plans, and a free-form state dict for plugins."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.pipeline import adoption
from esp_mirror_plugin.pipeline.checks import check_settings
from esp_mirror_plugin.pipeline.execute import Executor, PlanRecorder
from esp_mirror_plugin.pipeline.layout import Layout, build
from esp_mirror_plugin.pipeline.preflight import Preflight
from esp_mirror_plugin.pipeline.profiles import Profile, load_profile
from esp_mirror_plugin.pipeline.request import Request, Resolved
from esp_mirror_plugin.pipeline.steps import Command, Group, MakeDir, Step
from esp_mirror_plugin.system.discovery import HostView, Snapshot, discover, read_mounts
from esp_mirror_plugin.system.runner import NOT_INSTALLED, CommandFailed, Runner, ShRunner
from esp_mirror_plugin.system.target import Target

CHROOT_FILESYSTEMS = ("proc", "sys", "dev")


@dataclass(frozen=True)
class Adopt:
    """`esp-mirror adopt`'s own arguments, besides the settings apply takes too."""

    esp: str | None  # --esp: the live ESP's partition, when fstab and the mount do not say
    command: str  # the command line, kept in the journal for status and a run again


@dataclass
class Context:
    request: Resolved  # with the profile's defaults filled in
    base_profile: Profile  # the profile as prepare() loaded it, for the target's release then
    snapshot: Snapshot  # the disks, the array, mounts and NVRAM as prepare() saw them
    layout: Layout
    runner: Runner
    executor: Executor
    host: HostView = field(default_factory=HostView)
    notes: tuple[str, ...] = ()  # warnings found while preparing (shown with the plan)
    state: dict[str, Any] = field(default_factory=dict)
    preflight: Preflight | None = None
    _bound: set[str] = field(default_factory=set, repr=False)  # target roots with /proc, /sys, /dev
    _undo: list[Step] = field(default_factory=list, repr=False)  # cleanup for what execute() set up
    _profiles: dict[str, Profile] = field(default_factory=dict, repr=False)  # by the target's VERSION_ID

    def __post_init__(self) -> None:
        if self.preflight is None:
            self.preflight = Preflight(self.runner, self.base_profile.install_fix)

    @property
    def target(self) -> Target:
        """The target root, read afresh by each hook (an installer fills it between the hooks)."""
        return Target(self.request.target)

    @property
    def profile(self) -> Profile:
        """The profile for the target's release as it is now (its os-release VERSION_ID picks the
        profile's ``releases`` entry): an installer puts the base system in between the hooks."""
        version = self.target.os_release().get("VERSION_ID", "")
        if version not in self._profiles:
            self._profiles[version] = (
                self.base_profile if version == self.base_version else load_profile(self.request.profile, version)
            )
        return self._profiles[version]

    @property
    def base_version(self) -> str:
        """The target's release when prepare() loaded the profile (its VERSION_ID, "" when none)."""
        return self.base_profile.version

    def execute(self, group: str, steps: Iterable[Step], notes: Iterable[str] = ()) -> None:
        """Hand one hook's steps to the executor: recorded for a plan, run for apply.

        In-target commands first get /proc, /sys and /dev bound into the target (once; undone by
        the cleanup of :func:`esp_mirror_plugin.host.attached`). Every step is checked
        (:mod:`.preflight`) before the first one runs.
        """
        planned = Group(group, self._with_chroot_binds(tuple(steps)), tuple(notes))
        assert self.preflight is not None  # made in __post_init__
        self.preflight.check(planned)
        self.executor.execute(planned)

    def forget_chroot_binds(self) -> None:
        """Start over: the next in-target command binds /proc, /sys and /dev again if needed."""
        self._bound.clear()
        self._undo.clear()

    def cleanup_steps(self) -> tuple[Step, ...]:
        """Undo what :meth:`execute` set up (bind mounts), last first."""
        return tuple(self._undo)

    def _with_chroot_binds(self, steps: tuple[Step, ...]) -> tuple[Step, ...]:
        """``steps`` with /proc, /sys and /dev bound into a target right before the first command
        that runs there (once per target; undone by the cleanup)."""
        out: list[Step] = []
        for step in steps:
            root = os.path.normpath(step.root) if isinstance(step, Command) else "/"
            if root != "/" and root not in self._bound:
                self._bound.add(root)
                out += self._binds(root)
            out.append(step)
        return tuple(out)

    def _binds(self, root: str) -> list[Step]:
        mounted = {m.mountpoint for m in read_mounts(self.host)}
        out: list[Step] = []
        for fs in CHROOT_FILESYSTEMS:
            where = os.path.join(root, fs)
            if where in mounted:
                continue
            if not os.path.isdir(where):
                out.append(MakeDir(where, why="a mount point for chroot", root=root))
            out.append(Command(("mount", "--bind", f"/{fs}", where), why="chroot needs it"))
            self._undo.insert(0, Command(("umount", where), why="undo the bind mount", cleanup=True))
        return out


def prepare(
    request: Request,
    *,
    runner: Runner | None = None,
    executor: Executor | None = None,
    host: HostView | None = None,
    lenient: bool = False,
    adopt: Adopt | None = None,
) -> Context:
    """Load the profile, look at the machine's disks (read-only) and decide the layout.

    What is inside the target is read later, by each hook when it plans: an installer may call
    this before it has installed anything there.

    :param lenient: list facts that cannot be read as unverified instead of refusing (``plan``
        by a user who is not root); apply always reads strictly.
    :param adopt: take the running system's ESP into the mirror (`esp-mirror adopt`): the layout
        is the adoption's (:mod:`.adoption`), which also reads the target's fstab and journal now.
    :raises BadInput: anything unsafe or wrong, before anything is changed.
    :raises NothingToDo: ``adopt`` was asked of a target that is a mirror already.
    """
    runner = runner or ShRunner()
    host = host or HostView()
    target_given = request.target is not None
    version = Target(request.target or "/").os_release().get("VERSION_ID", "")
    profile = load_profile(request.profile, version)
    request = request.resolve(profile)
    check_settings(request)
    try:
        snapshot = discover(
            request.disks, request.device, runner, host, read_nvram=not request.no_nvram, lenient=lenient
        )
    except CommandFailed as exc:
        tool = exc.result.program
        if exc.result.returncode == NOT_INSTALLED:
            raise BadInput(f"{tool} is not installed: {profile.install_fix(tool)}") from None
        raise BadInput(
            f"cannot look at the disks: `{' '.join(exc.result.argv)}` failed ({exc.stderr_line}): "
            "run esp-mirror as root"
        ) from None
    if adopt is None:
        unfinished = adoption.load_journal(request.target)
        if unfinished is not None:
            raise BadInput(
                f"an adoption of this system's ESP is not finished ({adoption.journal_path(request.target)}): "
                f"finish it first by running it again: {unfinished.command}"
            )
        layout = build(request, profile, snapshot, target_given=target_given)
    else:
        facts = adoption.gather(request, snapshot, runner, Target(request.target), adopt.command, adopt.esp)
        layout = build(request, profile, snapshot, adopt=facts, host=host)
    notes = list(layout.notes)
    if snapshot.unread:
        notes.insert(
            0,
            f"UNVERIFIED: could not read {'; '.join(snapshot.unread)}. This plan takes them as "
            "empty; apply, which runs as root, reads them again and refuses what is not safe",
        )
    return Context(
        request, profile, snapshot, layout, runner, executor or PlanRecorder(), host=host, notes=tuple(notes)
    )
