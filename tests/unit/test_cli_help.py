"""The command line speaks for itself: --help says what esp-mirror does, how to use it and what its
exit codes mean; every option has help; `profiles FILE` shows what the planner will use; a
digest that cannot be one, or a plan that has none, is said as such; sizes read as sizes; a
missing program names the package of the profile's distribution (or none, rather than a guess).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re

import pytest
from conftest import BOOTLOADERS, GIB, MIB, PROFILES, Machine, ToolsExcept, assert_only_read

from esp_mirror_plugin import cli
from esp_mirror_plugin.errors import BadInput, StepFailed, size_text
from esp_mirror_plugin.pipeline import profiles
from esp_mirror_plugin.pipeline.bootloaders import BootloaderKind, spec

# -- --help ---------------------------------------------------------------------------------------


def _actions(parser: argparse.ArgumentParser, where: str):
    """(where, action) for every action of ``parser`` and of every command under it."""
    for action in parser._actions:
        yield where, action
        if isinstance(action, argparse._SubParsersAction):
            for pseudo in action._choices_actions:
                yield f"{where} {pseudo.dest}", pseudo
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{where} {name}")


def test_every_option_positional_and_command_has_help():
    seen = list(_actions(cli._parser([]), "esp-mirror"))
    without = [f"{where}: {a.option_strings or a.dest}" for where, a in seen if not a.help or a.help.strip() == ""]
    assert without == []
    commands = {where for where, _ in seen if where.count(" ") == 1}
    assert commands == {f"esp-mirror {name}" for name in cli._COMMANDS}  # every command was walked
    assert len(seen) > 100  # with all their options: plan and apply carry every setting


def test_the_walk_finds_an_option_without_help():
    """The walk above is what catches a missing help text (a check that cannot fail is none)."""
    parser = cli._parser([])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub.choices["status"].add_argument("--colour", action="store_true")
    assert [a.option_strings for _, a in _actions(parser, "esp-mirror") if not a.help] == [["--colour"]]


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        cli.main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_says_what_esp_mirror_does_with_examples_and_exit_codes(capsys):
    text = _help(capsys)
    flat = " ".join(text.split())
    assert (
        "esp-mirror puts an EFI System Partition on every disk it is given and mirrors them with md RAID1 "
        "(metadata 1.0: the superblock at the end, so the firmware sees a plain FAT32 on each disk), with one "
        "firmware boot entry per disk: the machine boots from any of its disks alone."
    ) in flat
    assert "\n  esp-mirror plan --disk /dev/sda --disk /dev/sdb\n" in text
    assert "\n  sudo esp-mirror apply --disk /dev/sda --disk /dev/sdb\n" in text
    assert "\n  sudo esp-mirror status\n" in text
    codes = re.findall(r"^  (\d+) +\S", text.split("exit codes:\n", 1)[1], re.MULTILINE)
    assert codes == ["0", "1", "2", "70", "130"]
    assert "--debug" in text and "interrupted" in text


def test_the_exit_codes_in_the_help_are_the_ones_main_returns(two_disks, monkeypatch):
    assert (BadInput.exit_code, StepFailed.exit_code) == (2, 1)
    assert "  2    bad input" in cli.EPILOG and "  1    problems found" in cli.EPILOG
    assert two_disks.cli("plan", "--disk").code == 2

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_run", interrupted)
    outcome = two_disks.cli("plan", *two_disks.args())
    assert outcome.code == 130 and "  130  interrupted" in cli.EPILOG
    assert outcome.err == (
        "esp-mirror: interrupted. Fix the cause and run the same `esp-mirror plan` again: it continues from here.\n"
    )


def test_the_description_and_epilog_keep_their_lines_and_the_command_help_is_wrapped(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    text = _help(capsys)
    assert f"\n{cli.DESCRIPTION}\n" in text and text.endswith(f"\n{cli.EPILOG}\n")
    commands = text.split("\ncommands:\n", 1)[1].split("\n\n", 1)[0]
    assert len(commands.splitlines()) > len(cli._COMMANDS) + 1  # long help texts took more than a line
    assert max(len(line) for line in commands.splitlines()) <= 60


def test_profiles_names_what_its_argument_may_be(capsys):
    text = _help(capsys, "profiles")
    assert "name        a built-in profile name or a YAML file" in text


# -- profiles FILE ----------------------------------------------------------------------------


def test_profiles_file_prints_the_merged_profile_as_the_planner_uses_it(machine: Machine):
    mine = machine.root / "mine.yaml"
    mine.write_text("extends: debian\nloader_id: mine\ngrub:\n  loader: grubx64.efi\n")

    outcome = machine.cli("profiles", str(mine))

    assert outcome.code == 0, outcome.err
    head, merged = outcome.out.split("\n", 2)[:2], outcome.out.split("\n", 2)[2]
    assert head == [f"# mine: {mine}", "# merged with debian (extends): the profile as the planner uses it"]
    assert "extends" not in merged
    assert "loader_id: mine\n" in merged and "  loader: grubx64.efi\n" in merged
    assert "  regenerate: [update-initramfs, -u, -k, all]\n" in merged  # from debian
    assert "    - [grub-install, '--target={grub_target}'," in merged  # an argv list as the built-in files write it
    again = machine.root / "again.yaml"
    again.write_text(merged)
    expected = dataclasses.replace(profiles.load_profile(str(mine)), name="again", source=str(again))
    assert profiles.load_profile(str(again)) == expected


@pytest.mark.parametrize("name", PROFILES)
def test_every_builtin_profile_shown_loads_back_as_the_same_profile(machine: Machine, name):
    outcome = machine.cli("profiles", name)
    assert outcome.code == 0, outcome.err
    shown = machine.root / f"{name}.yaml"
    shown.write_text(outcome.out)
    assert profiles.load_profile(str(shown)) == dataclasses.replace(profiles.load_profile(name), source=str(shown))


def test_a_builtin_profile_that_extends_none_is_shown_as_its_file_with_its_comments(machine: Machine):
    outcome = machine.cli("profiles", "debian")
    debian = profiles.load_profile("debian")
    assert outcome.out == f"# debian: {debian.source}\n{profiles.raw_profile_text('debian')}\n"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "is a directory, not a YAML file: give the file"),
        ("- a\n- list\n", "must be a mapping of keys, got list: write `key: value` lines"),
        ("extends: 3\n", "'extends' must be a string, got int 3: name a built-in profile or a YAML file"),
        (b"loader_id: \xff\n", "is not UTF-8 text (byte 11): give a YAML file"),
    ],
    ids=["directory", "list", "extends-int", "not-utf8"],
)
def test_profiles_with_a_bad_file_is_one_line_naming_the_problem(machine: Machine, content, problem):
    path = machine.root / "bad.yaml"
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    outcome = machine.cli("profiles", str(path))
    assert (outcome.code, outcome.out) == (2, "")
    assert outcome.error.startswith(("profile file ", "profile ")) and problem in outcome.error
    assert "\n" not in outcome.error


# -- the digest -----------------------------------------------------------------------------------


def test_a_plan_that_could_not_read_the_disks_has_no_digest_and_says_why(two_disks, monkeypatch):
    two_disks.host.unreadable.add("/dev/sdb")
    monkeypatch.setattr(cli, "is_root", lambda: False)

    text = two_disks.cli("plan", *two_disks.args()).out
    plan = json.loads(two_disks.cli("plan", "--json", *two_disks.args()).out)

    assert "# digest " not in text and plan["digest"] is None
    assert (
        "# no digest: this plan could not read everything (UNVERIFIED below), so apply --expect-plan cannot be "
        "given one; run plan as root for a plan with a digest\n"
    ) in text
    assert plan["text"] == text


def test_a_plan_that_read_everything_has_its_digest_in_text_and_json(two_disks):
    text = two_disks.cli("plan", *two_disks.args()).out
    digest = json.loads(two_disks.cli("plan", "--json", *two_disks.args()).out)["digest"]
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert f"# digest {digest} (apply --expect-plan takes it)\n" in text


@pytest.mark.parametrize("value", ["abc", "", "D" * 64, "0" * 63, "sha256:" + "0" * 64])
def test_apply_refuses_what_is_not_a_digest_before_it_reads_anything(two_disks, value):
    before = two_disks.target_state()
    outcome = two_disks.cli("apply", "--yes", "--expect-plan", value, *two_disks.args())
    assert (outcome.code, outcome.out, outcome.calls) == (2, "", [])
    assert outcome.error == (
        f"--expect-plan {value!r} is not a plan digest (64 hexadecimal digits): copy the digest line of "
        "`esp-mirror plan` (or plan --json's digest)"
    )
    assert two_disks.target_state() == before


def test_apply_with_a_well_formed_digest_of_another_plan_says_what_may_differ(two_disks):
    outcome = two_disks.cli("apply", "--yes", "--expect-plan", "0" * 64, *two_disks.args())
    assert outcome.code == 2
    assert outcome.error.startswith(f"the plan is no longer the one with digest {'0' * 64} (now ")
    assert outcome.error.endswith(
        "): the disks, the boot entries or a file it edits changed since, or the options differ from the plan's; "
        "review a new `esp-mirror plan` and apply that"
    )
    assert_only_read(outcome.calls)


# -- sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 bytes"),
        (300, "300 bytes"),
        (1536, "1.5 KiB"),
        (512 * MIB, "512 MiB"),
        (1536 * MIB, "1.5 GiB"),
        (20 * GIB - 1, "19.9 GiB"),  # rounded down: never more than there is
        (100 * 1024 * GIB, "100 TiB"),
        (104857600 * MIB, "100 TiB"),
    ],
)
def test_a_size_is_shown_in_the_largest_unit_it_fills(size, text):
    assert size_text(size) == text


# -- a missing program names its package ----------------------------------------------------------

INSTALL = {
    "alpine": "apk add",
    "arch": "pacman -S --needed --noconfirm",
    "debian": "apt-get install --yes",
    "ubuntu": "apt-get install --yes",
    "fedora": "dnf install --assumeyes",
    "rhel": "dnf install --assumeyes",
    "opensuse": "zypper --non-interactive install",
    "gentoo": "emerge --noreplace",
    "void": "xbps-install --yes",
}
# What each family calls the package of a program, where the name is not the same everywhere.
PACKAGE = {
    "rm": {"gentoo": "sys-apps/coreutils", None: "coreutils"},
    "mkfs.vfat": {"gentoo": "sys-fs/dosfstools", None: "dosfstools"},
    "mdadm": {"gentoo": "sys-fs/mdadm", None: "mdadm"},
    "sgdisk": {
        "debian": "gdisk",
        "ubuntu": "gdisk",
        "fedora": "gdisk",
        "rhel": "gdisk",
        "alpine": "sgdisk",
        "gentoo": "sys-apps/gptfdisk",
        None: "gptfdisk",
    },
    "efibootmgr": {"gentoo": "sys-boot/efibootmgr", None: "efibootmgr"},
    "tar": {"gentoo": "app-arch/tar", None: "tar"},
}
# Programs the plans ask for that a family ships no package of: the fix names none.
NOT_SHIPPED = {"alpine": {"systemctl"}, "void": {"systemctl"}}
# What adopt and the upkeep commands run besides what apply's plans do.
BEYOND_APPLY = {"rm", "sync", "tar", "cp", "mdadm", "wipefs", "sgdisk", "partx", "efibootmgr", "fsck.fat", "mdir"}


class Asked:
    """For ``RecordingRunner.tools``: every program is installed, and each one asked for is noted."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def __contains__(self, tool: str) -> bool:
        self.names.add(tool)
        return True


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("program", sorted(PACKAGE))
def test_a_missing_program_names_the_package_of_the_profiles_family(profile, program):
    package = PACKAGE[program].get(profile, PACKAGE[program][None])
    assert profiles.load_profile(profile).install_fix(program) == f"install it with `{INSTALL[profile]} {package}`"


@pytest.mark.parametrize("profile", PROFILES)
def test_every_program_a_plan_checks_for_has_a_package_or_says_it_names_none(two_disks, efi_image, profile):
    asked = Asked()
    two_disks.runner.tools = asked
    for kind in BOOTLOADERS:
        image = ["--efi-image", str(efi_image)] if spec(BootloaderKind(kind)).needs_image else []
        outcome = two_disks.cli("plan", *two_disks.args(), "--profile", profile, "--bootloader", kind, *image)
        assert outcome.code == 0, outcome.err
    prof = profiles.load_profile(profile)
    assert {"rm", "mkfs.vfat", "sgdisk", "mdadm"} <= asked.names  # the walk saw the plans' programs
    unnamed = {p for p in asked.names | BEYOND_APPLY if not prof.packages.names.get(p)}
    assert unnamed == NOT_SHIPPED.get(profile, set())
    for program in unnamed:
        assert prof.install_fix(program) == (
            f"install the package that ships it (the {profile} profile does not name it)"
        )


@pytest.mark.parametrize("profile", PROFILES)
def test_a_target_without_rm_is_told_to_install_coreutils(two_disks, profile):
    two_disks.runner.tools = ToolsExcept("rm")
    before = two_disks.target_state()
    outcome = two_disks.cli("plan", *two_disks.args(), "--profile", profile, "--bootloader", "systemd-boot")
    package = PACKAGE["rm"].get(profile, "coreutils")
    assert (outcome.code, outcome.out) == (2, "")
    assert outcome.error == (
        f"rm is not installed in the target {two_disks.target}: install it with `{INSTALL[profile]} {package}`"
    )
    assert_only_read(outcome.calls)
    assert two_disks.target_state() == before


def test_a_program_the_profile_names_no_package_for_gets_no_guessed_package(two_disks):
    two_disks.runner.tools = ToolsExcept("systemctl")
    outcome = two_disks.cli("plan", *two_disks.args(), "--profile", "alpine", "--bootloader", "systemd-boot")
    assert (outcome.code, outcome.error) == (
        2,
        f"systemctl is not installed in the target {two_disks.target}: install the package that ships it "
        "(the alpine profile does not name it)",
    )
