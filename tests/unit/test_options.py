"""Options that change the shape of the plan: initramfs modes, NVRAM, config files, architecture, shim."""

from __future__ import annotations

import io
import json

import pytest
from conftest import ToolsExcept, assert_only_read, json_commands, plan_of, starting

from esp_mirror_plugin import cli, host
from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.pipeline.context import prepare
from esp_mirror_plugin.pipeline.kinds import InitramfsMode
from esp_mirror_plugin.pipeline.request import Request


def group_names(plan: dict) -> list[str]:
    return [g["name"] for g in plan["groups"]]


# -- initramfs modes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "regenerate"),
    [("debian", ("update-initramfs", "-u", "-k", "all")), ("fedora", ("dracut", "--regenerate-all", "--force"))],
)
def test_regenerate_mode_rebuilds_once_in_the_whole_plan(two_disks, profile, regenerate):
    cmds = json_commands(plan_of(two_disks, "--profile", profile))
    assert [c for c in cmds if c[2:] == regenerate] == [("chroot", str(two_disks.target), *regenerate)]


def test_configure_only_writes_the_settings_and_does_not_rebuild(two_disks):
    plan = plan_of(two_disks, "--profile", "fedora", "--initramfs", "configure-only")
    group = next(g for g in plan["groups"] if g["name"] == "initramfs_config")
    assert [s["kind"] for s in group["steps"]] == ["write-file"]
    assert not any("dracut" in c for c in json_commands(plan))


def test_skip_touches_neither_settings_nor_images(two_disks):
    plan = plan_of(two_disks, "--profile", "arch", "--initramfs", "skip")
    assert "initramfs_config" not in group_names(plan)
    assert not any("mkinitcpio" in " ".join(c) for c in json_commands(plan))


@pytest.mark.parametrize(
    ("mode", "refused"),
    [(InitramfsMode.REGENERATE, True), (InitramfsMode.CONFIGURE_ONLY, False), (InitramfsMode.SKIP, False)],
)
def test_the_generator_must_be_in_the_target_only_when_it_runs(two_disks, mode, refused):
    two_disks.runner.tools = ToolsExcept("dracut")
    request = Request(
        disks=("/dev/sda", "/dev/sdb"), profile="fedora", target=str(two_disks.target), initramfs=mode, arch="x86_64"
    )
    ctx = prepare(request, runner=two_disks.runner, host=two_disks.host)  # the target is not looked at yet
    pm = host.get_plugin_manager(load_entrypoints=False)
    if refused:
        with pytest.raises(
            BadInput,
            match=f"^dracut is not installed in the target {two_disks.target}: install it "
            "with `dnf install --assumeyes dracut`$",
        ):
            host.plan(ctx, pm)
    else:
        host.plan(ctx, pm)


def test_per_kernel_generator_without_a_kernel_is_bad_input(two_disks):
    (two_disks.target / "lib/modules/6.1.0-13-amd64").rmdir()
    outcome = two_disks.cli("plan", *two_disks.args(), "--profile", "alpine")
    assert (outcome.code, outcome.error) == (
        2,
        f"no kernel in {two_disks.target}/lib/modules to build an initramfs "
        "for: install the kernel first, or pass --initramfs configure-only",
    )
    assert_only_read(outcome.calls)


# -- NVRAM ------------------------------------------------------------------------------------


def test_no_nvram_reads_and_writes_no_boot_entries_and_says_how_it_boots(two_disks):
    outcome = two_disks.cli("plan", "--json", *two_disks.args(), "--no-nvram")
    plan = json.loads(outcome.out)
    assert ("efibootmgr", "-v") not in outcome.calls
    assert starting(json_commands(plan), "efibootmgr") == [] and plan["nvram"] is False
    boot = next(g for g in plan["groups"] if g["name"] == "bootloader")
    assert boot["notes"] == [
        "no NVRAM boot entries (--no-nvram or no EFI variables): the firmware boots each disk "
        "through \\EFI\\BOOT\\BOOTX64.EFI; `esp-mirror entries` on the installed system makes them, one per "
        "disk, once it runs with EFI variables"
    ]


def test_without_efi_variables_nvram_is_off_with_a_warning(two_disks):
    two_disks.set_efivars(present=False)
    outcome = two_disks.cli("plan", "--json", *two_disks.args())
    plan = json.loads(outcome.out)
    assert ("efibootmgr", "-v") not in outcome.calls
    assert starting(json_commands(plan), "efibootmgr") == [] and plan["nvram"] is False
    [warning] = next(g for g in plan["groups"] if g["name"] == "notes")["notes"]
    assert warning.startswith(
        "WARNING: no EFI variables here (/sys/firmware/efi/efivars is empty): no boot "
        "entries are made; the firmware boots each disk through the \\EFI\\BOOT\\ fallback path; pass --no-nvram "
        "to silence this"
    )


def test_without_efi_variables_apply_does_not_need_efibootmgr(two_disks):
    two_disks.set_efivars(present=False)
    two_disks.runner.tools = ToolsExcept("efibootmgr")
    request = Request(disks=("/dev/sda", "/dev/sdb"), target=str(two_disks.target), arch="x86_64")
    ctx = prepare(request, runner=two_disks.runner, host=two_disks.host)
    assert ctx.layout.nvram is False


# -- where the settings come from -------------------------------------------------------------


def test_a_config_file_gives_the_settings_and_options_override_it(two_disks, tmp_path):
    config = tmp_path / "esp.yaml"
    config.write_text(
        f"disks: [/dev/sda, /dev/sdb]\ntarget: {two_disks.target}\nesp_size: 1G\nprofile: arch\n"
        "entry-label: Site\nno_nvram: true\n"
    )
    outcome = two_disks.cli("plan", "--json", "--config", str(config), "--esp-size", "600M")
    assert outcome.code == 0, outcome.err
    plan = json.loads(outcome.out)
    assert (plan["profile"], plan["nvram"], plan["request"]["entry_label"]) == ("arch", False, "Site")
    assert [c[1] for c in starting(json_commands(plan), "sgdisk") if c[1] != "--zap-all"] == [
        "--new=1:2048:1230847"
    ] * 2


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("disks: [/dev/sda]\nesp-sise: 1G\n", "unknown setting 'esp_sise': allowed are "),
        ("wipe: yes please\n", "wipe must be true or false"),
        ("disks: /dev/sda\n", "disks must be a list of paths"),
        ("initramfs: sometimes\n", "unknown initramfs 'sometimes': use one of regenerate, configure-only, skip"),
        ("[unclosed\n", "not valid YAML"),
    ],
)
def test_a_bad_config_file_is_bad_input_naming_the_file(two_disks, tmp_path, content, problem):
    config = tmp_path / "esp.yaml"
    config.write_text(content)
    outcome = two_disks.cli("plan", "--config", str(config), "--target", str(two_disks.target))
    assert outcome.code == 2
    assert outcome.error.startswith(f"config file {config}: ") and problem in outcome.error
    assert two_disks.runner.calls == []


def test_version_is_printed(machine, capsys):
    with pytest.raises(SystemExit) as exit_:
        machine.cli("--version")
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("esp-mirror ")


def test_apply_without_a_runner_refuses_to_run_as_a_normal_user(monkeypatch, two_disks):
    """The real runner is used here (no runner given); starting any process would fail the test."""
    monkeypatch.setattr(cli, "is_root", lambda: False)
    err = io.StringIO()
    assert cli.main(["apply", "--yes", *two_disks.args()], out=io.StringIO(), err=err) == 2
    assert err.getvalue() == "esp-mirror: error: apply changes disks and must run as root: run it with sudo\n"


# -- architecture and shim --------------------------------------------------------------------


def plan_groups(machine, **fields):
    request = Request(disks=("/dev/sda", "/dev/sdb"), target=str(machine.target), **fields)
    ctx = prepare(request, runner=machine.runner, host=machine.host)
    return host.plan(ctx, host.get_plugin_manager(load_entrypoints=False))


def test_aarch64_uses_the_arm64_grub_target_and_bootaa64(two_disks):
    groups = plan_groups(two_disks, arch="aarch64")
    boot = next(g for g in groups if g.name == "bootloader")
    grub = [s.argv for s in boot.steps if getattr(s, "argv", ("",))[0] == "grub-install"]
    assert grub[0][:2] == ("grub-install", "--target=arm64-efi")
    assert grub[1][-1] == "--removable" and "\\EFI\\BOOT\\BOOTAA64.EFI" in boot.steps[1].why
    creates = [s.argv for s in boot.steps if getattr(s, "argv", ("",))[:3] == ("efibootmgr", "--quiet", "--create")]
    assert creates and all(c[-1] == "\\EFI\\debian\\grubaa64.efi" for c in creates)


def test_an_unknown_architecture_is_bad_input(two_disks):
    with pytest.raises(BadInput, match=r"^architecture riscv64 is not supported: esp-mirror knows x86_64 and aarch64$"):
        plan_groups(two_disks, arch="riscv64")


def test_with_shim_in_the_target_the_entries_start_shim(two_disks):
    shim = two_disks.target / "usr/lib/shim/shimx64.efi.signed"
    shim.parent.mkdir(parents=True)
    shim.write_bytes(b"MZ shim")
    creates = starting(json_commands(plan_of(two_disks)), "efibootmgr", "--quiet", "--create")
    assert {c[-1] for c in creates} == {"\\EFI\\debian\\shimx64.efi"}


def _shim_in(target, *names):
    for name in names:
        path = target / "usr/lib/shim" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"MZ " + name.encode())


def _copies(plan):
    return [(s["source"], s["dest"]) for g in plan["groups"] for s in g["steps"] if s["kind"] == "copy-file"]


@pytest.mark.parametrize("profile", ["debian", "ubuntu"])
def test_with_shim_its_fallback_goes_beside_it_at_the_removable_path(two_disks, profile):
    """Debian's grub-install --removable puts shim, GRUB and MokManager at \\EFI\\BOOT\\ but not
    fbx64.efi, which makes an entry when the firmware starts shim with none."""
    _shim_in(two_disks.target, "shimx64.efi.signed", "fbx64.efi.signed")
    copies = _copies(plan_of(two_disks, "--profile", profile))
    assert copies == [
        (str(two_disks.target / "usr/lib/shim/fbx64.efi.signed"), str(two_disks.target / "boot/efi/EFI/BOOT/fbx64.efi"))
    ]


def test_without_shim_or_its_fallback_nothing_is_copied_beside_grub(two_disks):
    assert _copies(plan_of(two_disks)) == []
    _shim_in(two_disks.target, "shimx64.efi.signed")  # a shim package without the fallback
    assert _copies(plan_of(two_disks)) == []


@pytest.mark.parametrize("profile", ["fedora", "rhel"])
def test_fedoras_shim_package_brings_its_own_fallback(two_disks, profile):
    _shim_in(two_disks.target, "shimx64.efi.signed", "fbx64.efi.signed")
    assert _copies(plan_of(two_disks, "--profile", profile)) == []


@pytest.mark.parametrize("profile", ["fedora", "rhel", "opensuse"])
def test_grub_is_installed_with_a_tool_the_distribution_ships(two_disks, profile):
    cmds = json_commands(plan_of(two_disks, "--profile", profile))
    assert not any("grub-install" in c for c in cmds)


def test_binds_come_right_before_the_first_command_in_the_target_not_earlier(two_disks, efi_image):
    plan = plan_of(two_disks, "--bootloader", "efi", "--efi-image", str(efi_image), "--initramfs", "configure-only")
    # the payload is copied, the initramfs only configured: the first command in the target is the
    # installed system's `systemctl enable esp-mirror-check.timer`, and the binds come right before it
    steps = [(g["name"], s) for g in plan["groups"] for s in g["steps"]]
    first = next(i for i, (_, s) in enumerate(steps) if s["kind"] == "command" and s["argv"][0] == "chroot")
    assert steps[first][0] == "installed-system" and steps[first][1]["argv"][2:] == [
        "systemctl",
        "enable",
        "esp-mirror-check.timer",
    ]
    binds = [i for i, (_, s) in enumerate(steps) if s["kind"] == "command" and s["argv"][:2] == ["mount", "--bind"]]
    assert binds == [first - 3, first - 2, first - 1]
    assert group_names(plan)[-1] == "cleanup"


def test_existing_bind_mounts_in_the_target_are_reused_not_mounted_again(two_disks):
    for fs in ("proc", "sys", "dev"):
        two_disks.mount("0:5", f"{two_disks.target}/{fs}", fs, fs)
    plan = plan_of(two_disks)
    assert "setup" not in group_names(plan) and "cleanup" not in group_names(plan)
