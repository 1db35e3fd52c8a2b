"""The plugin contract: hook order, spec/impl agreement, failures naming the hook, foreign hosts."""

from __future__ import annotations

import pluggy
import pytest
from conftest import commands

from esp_mirror_plugin import PROJECT, hookimpl, host
from esp_mirror_plugin.errors import BadInput, StepFailed
from esp_mirror_plugin.pipeline.context import prepare
from esp_mirror_plugin.pipeline.execute import PlanRecorder
from esp_mirror_plugin.pipeline.request import Request


@pytest.fixture
def ctx(two_disks):
    request = Request(disks=("/dev/sda", "/dev/sdb"), target=str(two_disks.target), arch="x86_64")
    return prepare(request, runner=two_disks.runner, host=two_disks.host)


class Recorder:
    """A third-party plugin that records which hooks it saw, in order, and shares state between them."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def _saw(self, name: str, ctx) -> None:
        self.seen.append(name)
        ctx.state.setdefault("recorder", []).append(name)

    @hookimpl
    def pre_partition(self, ctx):
        self._saw("pre_partition", ctx)

    @hookimpl
    def post_format(self, ctx):
        self._saw("post_format", ctx)

    @hookimpl
    def initramfs_config(self, ctx):
        self._saw("initramfs_config", ctx)

    @hookimpl
    def bootloader(self, ctx):
        self._saw("bootloader", ctx)


def test_a_plugin_sees_the_four_hooks_once_each_in_order(ctx):
    pm = host.get_plugin_manager(load_entrypoints=False)
    recorder = Recorder()
    pm.register(recorder)
    pm.check_pending()
    groups = host.plan(ctx, pm)
    assert recorder.seen == ["pre_partition", "post_format", "initramfs_config", "bootloader"]
    assert ctx.state["recorder"] == recorder.seen
    assert [g.name for g in groups] == [
        "pre_partition",
        "post_format",
        "initramfs_config",
        "bootloader",
        "installed-system",
        "cleanup",
    ]


def test_every_hookspec_has_esp_mirrors_implementation_and_check_pending_passes():
    pm = host.get_plugin_manager(load_entrypoints=False)
    pm.check_pending()
    builtin = pm.get_plugin(PROJECT)
    for name in host.HOOK_ORDER:
        caller = getattr(pm.hook, name)
        assert caller.spec is not None, name
        assert [impl.plugin for impl in caller.get_hookimpls()] == [builtin], name


def test_check_pending_catches_a_misspelled_hook():
    class Typo:
        @hookimpl
        def pre_partiton(self, ctx):
            pass

    pm = host.get_plugin_manager(load_entrypoints=False)
    pm.register(Typo())
    with pytest.raises(pluggy.PluginValidationError, match="pre_partiton"):
        pm.check_pending()


def test_a_failing_plugin_stops_the_pipeline_with_step_failed_naming_the_hook(ctx):
    class Broken:
        @hookimpl
        def post_format(self, ctx):
            raise RuntimeError("disk on fire")

    pm = host.get_plugin_manager(load_entrypoints=False)
    recorder = Recorder()
    pm.register(recorder)
    pm.register(Broken())  # registered last: pluggy calls it first
    with pytest.raises(StepFailed) as failure:
        host.plan(ctx, pm)
    assert (failure.value.group, failure.value.step, failure.value.detail) == (
        "post_format",
        "hook post_format",
        "RuntimeError: disk on fire",
    )
    assert recorder.seen == ["pre_partition"]
    assert [g.name for g in ctx.executor.groups] == ["pre_partition"]


def test_bad_input_from_a_plugin_passes_through_unchanged(ctx):
    class Picky:
        @hookimpl
        def pre_partition(self, ctx):
            raise BadInput("this installer needs --esp-size 1G: pass it")

    pm = host.get_plugin_manager(load_entrypoints=False)
    pm.register(Picky())
    with pytest.raises(BadInput, match=r"^this installer needs --esp-size 1G: pass it$"):
        host.plan(ctx, pm)


def test_a_host_with_another_project_name_loads_esp_mirror_with_one_call(ctx, two_disks):
    installer_impl = pluggy.HookimplMarker("installer")

    class InstallerPlugin:
        def __init__(self) -> None:
            self.seen: list[str] = []

        @installer_impl
        def pre_partition(self, ctx):
            self.seen.append("pre_partition")

        @installer_impl
        def bootloader(self, ctx):
            self.seen.append("bootloader")

    pm = pluggy.PluginManager("installer")
    host.register_into(pm)
    installer = InstallerPlugin()
    pm.register(installer)
    pm.check_pending()
    assert pm.get_plugin(PROJECT) is not None

    groups = host.plan(ctx, pm)

    assert installer.seen == ["pre_partition", "bootloader"]
    reference = host.plan(ctx, host.get_plugin_manager(load_entrypoints=False))
    assert commands(groups) == commands(reference)
    assert "mdadm" in {argv[0] for argv in commands(groups, "post_format")}


def test_an_installer_can_call_the_hooks_itself_with_keyword_arguments(ctx):
    pm = host.get_plugin_manager(load_entrypoints=False)
    ctx.executor = PlanRecorder()
    for name in host.HOOK_ORDER:
        getattr(pm.hook, name)(ctx=ctx)
    # the bootloader hook's own group, then what the installed system needs (planned last)
    assert [g.name for g in ctx.executor.groups] == [*host.HOOK_ORDER, "installed-system"]


def test_entry_point_plugins_load_unless_blocked_by_the_environment(monkeypatch):
    loaded: list[str] = []
    monkeypatch.setattr(
        pluggy.PluginManager, "load_setuptools_entrypoints", lambda self, group, name=None: loaded.append(group) or 0
    )
    monkeypatch.delenv("ESP_MIRROR_NO_PLUGINS")
    host.get_plugin_manager()
    assert loaded == [PROJECT]
    monkeypatch.setenv("ESP_MIRROR_NO_PLUGINS", "1")
    host.get_plugin_manager()
    assert loaded == [PROJECT]
