"""The one argument every hook receives: request, profile, machine snapshot, layout, runner,
executor and a free-form state dict for plugins to share between hooks."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .discovery import HostView, Snapshot, discover
from .errors import BadInput
from .execute import Executor, PlanRecorder
from .layout import Layout, build, check_settings, required_host_tools, required_target_tools
from .profiles import Profile, load_profile
from .request import Request
from .runner import Runner, ShRunner
from .steps import Group, Step


@dataclass
class Context:
    request: Request  # with the profile's defaults filled in
    profile: Profile
    snapshot: Snapshot
    layout: Layout
    runner: Runner
    executor: Executor
    notes: tuple[str, ...] = ()  # warnings found while preparing (shown with the plan)
    state: dict[str, Any] = field(default_factory=dict)

    def execute(self, group: str, steps: Iterable[Step], notes: Iterable[str] = ()) -> None:
        """Hand one hook's steps to the executor: recorded for a plan, run for apply."""
        self.executor.execute(Group(group, tuple(steps), tuple(notes)))


def prepare(request: Request, *, runner: Runner | None = None, executor: Executor | None = None,
            host: HostView | None = None, strict_tools: bool = True) -> Context:
    """Load the profile, look at the machine (read-only) and decide the layout.

    Raises :class:`BadInput` for anything unsafe or wrong, before anything is changed. With
    ``strict_tools`` a missing program is an error; otherwise (``plan``) it is a note.
    """
    runner = runner or ShRunner()
    profile = load_profile(request.profile)
    request = request.resolve(profile)
    check_settings(request)
    image_mode_guess = any(_is_file(d, host) for d in request.disks)
    host_tools = required_host_tools(request, image_mode_guess, nvram=not request.no_nvram)
    snapshot = discover(request, profile, runner, host, host_tools=host_tools,
                        target_tools=required_target_tools(request, profile))
    layout = build(request, profile, snapshot)
    notes = list(layout.notes)
    missing = [t for t in snapshot.missing_host_tools if t != "efibootmgr" or layout.nvram]
    missing_target = list(snapshot.missing_target_tools)
    for tool in missing + missing_target:
        where = "" if tool in missing else f" in the target {request.target}"
        message = (f"{tool} is not installed{where}: install it with `{profile.install_hint(tool)}`")
        if strict_tools:
            raise BadInput(message)
        notes.append(f"WARNING: {message}")
    return Context(request, profile, snapshot, layout, runner, executor or PlanRecorder(), tuple(notes))


def _is_file(path: str, host: HostView | None) -> bool:
    return (host or HostView()).kind(path) == "file"
