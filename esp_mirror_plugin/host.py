"""The reference host: a PluginManager factory and the pipeline that calls the hooks in order.

The CLI uses exactly this; an installer can too, or call the hooks itself inside
:func:`attached` (see hookspecs.py and the README's installer example).
"""

from __future__ import annotations

import contextlib
import io
import os
import types
from collections.abc import Iterator
from typing import TextIO

import pluggy

from esp_mirror_plugin import PROJECT, hookspecs, plugin
from esp_mirror_plugin.errors import BadInput, StepFailed
from esp_mirror_plugin.pipeline import attach
from esp_mirror_plugin.pipeline.context import Context
from esp_mirror_plugin.pipeline.execute import Applier, PlanRecorder
from esp_mirror_plugin.pipeline.steps import Group

HOOK_ORDER = ("pre_partition", "post_format", "initramfs_config", "bootloader")
BLOCK_PLUGINS_ENV = "ESP_MIRROR_NO_PLUGINS"  # set to 1 to load no third-party plugins


def get_plugin_manager(load_entrypoints: bool = True) -> pluggy.PluginManager:
    """A PluginManager with esp-mirror's hooks and its own implementation registered.

    Third-party plugins are loaded from the ``esp_mirror`` entry-point group unless
    ``$ESP_MIRROR_NO_PLUGINS`` is set.
    """
    pm = pluggy.PluginManager(PROJECT)
    register_into(pm)
    if load_entrypoints and not os.environ.get(BLOCK_PLUGINS_ENV):
        pm.load_setuptools_entrypoints(PROJECT)
    pm.check_pending()
    return pm


def register_into(pm: pluggy.PluginManager) -> None:
    """Add esp-mirror's hook specs and implementation to ``pm`` — one call for any host.

    A host whose PluginManager has another project name (pluggy looks up ``<project>_impl``
    markers) gets copies of the specs and implementations re-marked with its own name.
    """
    if pm.project_name == PROJECT:
        pm.add_hookspecs(hookspecs)
        pm.register(plugin, name=PROJECT)
        return
    pm.add_hookspecs(_remarked(hookspecs, f"{PROJECT}_spec", pluggy.HookspecMarker(pm.project_name)))
    pm.register(_remarked(plugin, f"{PROJECT}_impl", pluggy.HookimplMarker(pm.project_name)), name=PROJECT)


def _remarked(module: types.ModuleType, attr: str, marker: pluggy.HookspecMarker | pluggy.HookimplMarker) -> type:
    """A class holding copies of ``module``'s hook functions, marked with ``marker``."""
    namespace: dict[str, object] = {}
    for name in HOOK_ORDER:
        function = getattr(module, name)
        copy = types.FunctionType(
            function.__code__, function.__globals__, name, function.__defaults__, function.__closure__
        )
        copy.__annotations__ = dict(function.__annotations__)
        copy.__doc__ = function.__doc__
        namespace[name] = marker(copy, **getattr(function, attr))
    return type(f"{PROJECT}_{attr}", (), namespace)


@contextlib.contextmanager
def attached(ctx: Context) -> Iterator[Context]:
    """Around the hooks: attach what they need, release it afterwards, also after an error.

    On entry, loop devices for image-file disks are attached (their names bind ``$LOOP_n``);
    bind mounts for chroot are made by the first hook that runs a command in the target. On
    exit (normal or not) those mounts are undone and, for image files, the ESP is unmounted,
    the array stopped and the loop devices detached. Steps go through ``ctx.executor``, so a
    :class:`PlanRecorder` records them as the "setup" and "cleanup" groups.
    """
    ctx.forget_chroot_binds()  # a new run: nothing is bound by it yet
    setup = attach.setup_steps(ctx)
    if setup:
        ctx.execute("setup", setup)
    try:
        yield ctx
    finally:
        cleanup = attach.cleanup_steps(ctx)
        if cleanup:
            ctx.executor.execute(Group("cleanup", cleanup))


def plan(ctx: Context, pm: pluggy.PluginManager) -> list[Group]:
    """Call every hook in order with a recording executor; return all groups, setup to cleanup.

    Every group is checked as it is recorded (:mod:`.preflight`), so whatever apply would trip
    on is refused here, before anything is changed.
    """
    recorder = PlanRecorder()
    ctx.executor = recorder
    with attached(ctx):
        for name in HOOK_ORDER:
            call_hook(pm, name, ctx)
    notes = Group("notes", (), ctx.notes) if ctx.notes else None
    return [g for g in (notes, *recorder.groups) if g and (g.steps or g.notes)]


def call_hook(pm: pluggy.PluginManager, name: str, ctx: Context) -> None:
    """Call one hook; any error stops the pipeline with the hook's name in the message."""
    try:
        getattr(pm.hook, name)(ctx=ctx)
    except (BadInput, StepFailed):
        raise
    except Exception as exc:
        raise StepFailed(name, f"hook {name}", f"{type(exc).__name__}: {exc}") from exc


def applier_for(ctx: Context, out: TextIO | None = None) -> Applier:
    """The Applier :func:`apply` runs the steps with; its ``now`` is what a plan's forecast
    (:func:`~esp_mirror_plugin.pipeline.execute.would_change`) looks at."""
    return Applier(ctx.runner, out or io.StringIO(), host=ctx.host)


def apply(groups: list[Group], ctx: Context, out: TextIO) -> Applier:
    """Run planned groups for real; the cleanup group runs even after a failure."""
    applier = applier_for(ctx, out)
    ctx.executor = applier
    body = [g for g in groups if g.name != "cleanup"]
    cleanup = [g for g in groups if g.name == "cleanup"]
    try:
        for group in body:
            applier.execute(group)
    finally:
        for group in cleanup:
            applier.execute(group)
    return applier
