"""Profiles: the built-in ones load; user profiles are validated and may extend a built-in one."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import PROFILES, assert_only_read

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.pipeline import profiles
from esp_mirror_plugin.pipeline.bootloaders import BootloaderKind
from esp_mirror_plugin.pipeline.kinds import Generator


def test_builtin_profiles_are_exactly_the_nine_distributions():
    assert profiles.builtin_names() == sorted(PROFILES)


@pytest.mark.parametrize("name", PROFILES)
def test_every_builtin_profile_loads_and_names_a_package_for_every_tool_it_needs(name):
    prof = profiles.load_profile(name)
    assert prof.name == name and prof.bootloader is BootloaderKind.GRUB
    tools = {
        "sgdisk",
        "sfdisk",
        "partx",
        "wipefs",
        "blkid",
        "losetup",
        "mount",
        "umount",
        "mdadm",
        "mkfs.vfat",
        "efibootmgr",
        "bootctl",
        "chroot",
        prof.initramfs.regenerate[0],
        *(argv[0] for argv in prof.grub.install),
    }
    assert tools <= prof.packages.names.keys()


@pytest.mark.parametrize(
    ("name", "generator"),
    [
        ("debian", Generator.INITRAMFS_TOOLS),
        ("ubuntu", Generator.INITRAMFS_TOOLS),
        ("fedora", Generator.DRACUT),
        ("rhel", Generator.DRACUT),
        ("opensuse", Generator.DRACUT),
        ("gentoo", Generator.DRACUT),
        ("void", Generator.DRACUT),
        ("arch", Generator.MKINITCPIO),
        ("alpine", Generator.MKINITFS),
    ],
)
def test_each_distribution_uses_its_own_initramfs_generator(name, generator):
    assert profiles.load_profile(name).initramfs.generator is generator


def test_opensuse_inherits_fedoras_dracut_settings_including_no_hostonly_cmdline():
    settings = dict(profiles.load_profile("opensuse").initramfs.settings)
    assert settings["hostonly_cmdline"] == "no" and settings["mdadmconf"] == "yes"


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("debian", "apt-get install --yes gdisk"),
        ("ubuntu", "apt-get install --yes gdisk"),
        ("arch", "pacman -S --needed --noconfirm gptfdisk"),
        ("fedora", "dnf install --assumeyes gdisk"),
        ("opensuse", "zypper --non-interactive install gptfdisk"),
        ("void", "xbps-install --yes gptfdisk"),
        ("gentoo", "emerge --noreplace sys-apps/gptfdisk"),
        ("alpine", "apk add sgdisk"),
    ],
)
def test_install_hint_names_the_package_of_that_distribution(name, hint):
    assert profiles.load_profile(name).install_hint("sgdisk") == hint


# -- user profiles ----------------------------------------------------------------------------


@pytest.fixture
def user_profile(tmp_path: Path):
    def write(data: dict | str, name: str = "site.yaml") -> str:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
        return str(path)

    return write


def test_user_profile_extending_debian_overrides_one_key_and_keeps_the_rest(user_profile):
    prof = profiles.load_profile(user_profile({"extends": "debian", "loader_id": "mydebian"}))
    debian = profiles.load_profile("debian")
    assert prof.name == "site" and prof.loader_id == "mydebian"
    assert (prof.esp_mountpoint, prof.mdadm_conf, prof.initramfs) == (
        debian.esp_mountpoint,
        debian.mdadm_conf,
        debian.initramfs,
    )


def test_nested_mappings_merge_key_by_key_and_lists_replace(user_profile):
    prof = profiles.load_profile(
        user_profile({"extends": "fedora", "initramfs": {"settings": {"hostonly": "no"}}, "periodic_check": []})
    )
    assert dict(prof.initramfs.settings) == {
        "add_dracutmodules": " mdraid ",
        "mdadmconf": "yes",
        "hostonly_cmdline": "no",
        "hostonly": "no",
    }
    assert prof.initramfs.regenerate == ("dracut", "--regenerate-all", "--force")
    assert prof.periodic_check == ()


def test_a_user_profile_drives_the_plan(two_disks, user_profile):
    path = user_profile({"extends": "debian", "loader_id": "mydebian", "entry_label": "Site"})
    outcome = two_disks.cli("plan", *two_disks.args(), "--profile", path)
    assert outcome.code == 0, outcome.err
    assert "--bootloader-id=mydebian\n" in outcome.out
    assert "--label 'Site (esp-mirror WD-WCC4N0AAAAAA)' --loader '\\EFI\\mydebian\\grubx64.efi'" in outcome.out


def test_every_builtin_profile_needs_mdadm_in_the_target():
    assert all(profiles.load_profile(name).needs_mdadm for name in PROFILES)


def test_a_profile_whose_distribution_assembles_md_another_way_plans_without_mdadm(two_disks, user_profile):
    """The refusal of a target without mdadm (tests/unit/test_bad_input.py) is the default only."""
    (two_disks.target / "usr/sbin/mdadm").unlink()
    path = user_profile({"extends": "debian", "needs_mdadm": False})
    outcome = two_disks.cli("plan", *two_disks.args(), "--profile", path)
    assert outcome.code == 0, outcome.err


INVALID = [
    pytest.param(
        {"extends": "debian", "colour": "blue"},
        "unknown key 'colour': allowed here are boot_assembly, bootloader, debconf, description, entry_label, "
        "esp_mountpoint, extends, grub, init, initramfs, loader_id, mdadm_conf, needs_mdadm, own_check, packages, "
        "periodic_check, releases, systemd_boot",
        id="unknown-key",
    ),
    pytest.param(
        {"extends": "debian", "releases": {"13": {"loader_id": "trixie"}}},
        "'releases.13' sets 'loader_id', which is the same for every release: set it at the top of the profile",
        id="release-sets-a-fixed-key",
    ),
    pytest.param(
        {"extends": "debian", "releases": {"13": {"systemd_boot": {"shimm": True}}}},
        "unknown key 'releases.13.systemd_boot.shimm': allowed here are shim, signed_packages",
        id="release-unknown-key",
    ),
    pytest.param(
        {"extends": "debian", "initramfs": {"generatr": "dracut"}},
        "unknown key 'initramfs.generatr': allowed here are dropin_dir, generator, regenerate, settings",
        id="unknown-nested-key",
    ),
    pytest.param({"extends": "debian", "loader_id": 5}, "'loader_id' must be a string, got int 5", id="wrong-type"),
    pytest.param(
        {"extends": "debian", "initramfs": {"regenerate": "dracut -f"}},
        "'initramfs.regenerate' must be a non-empty list of strings (an argv), got str 'dracut -f'",
        id="argv-as-a-string",
    ),
    pytest.param(
        {"extends": "debian", "initramfs": "dracut"},
        "'initramfs' must be a mapping with keys dropin_dir, generator, regenerate, settings",
        id="mapping-expected",
    ),
    pytest.param(
        {"extends": "fedora", "initramfs": {"generator": "booster"}},
        "'initramfs.generator' is 'booster': allowed are initramfs-tools, dracut, mkinitcpio, mkinitfs",
        id="bad-generator",
    ),
    pytest.param(
        {"extends": "debian", "bootloader": "lilo"},
        f"'bootloader' is 'lilo': allowed are {', '.join(BootloaderKind)}",  # efi, zfsbootmenu, systemd-boot, grub
        id="bad-bootloader",
    ),
    pytest.param(
        "- just\n- a list\n",
        "must be a mapping of keys, got list: write `key: value` lines (`esp-mirror profiles debian` shows one)",
        id="not-a-mapping",
    ),
]


@pytest.mark.parametrize(("data", "problem"), INVALID)
def test_invalid_user_profile_is_bad_input_naming_the_file_and_the_key(user_profile, data, problem):
    path = user_profile(data)
    with pytest.raises(BadInput) as error:
        profiles.load_profile(path)
    assert str(error.value) == f"profile {path}: {problem}"


def test_profile_missing_a_required_key_says_which_and_how_to_fix_it(user_profile):
    data = yaml.safe_load(profiles.raw_profile_text("debian"))
    del data["description"]
    path = user_profile(data)
    with pytest.raises(BadInput) as error:
        profiles.load_profile(path)
    assert str(error.value) == (
        f"profile {path}: missing key 'description' (a string): add it or `extends:` a profile that has it"
    )


def test_profile_missing_a_nested_required_key_names_it(user_profile):
    data = yaml.safe_load(profiles.raw_profile_text("debian"))
    del data["initramfs"]["regenerate"]
    path = user_profile(data)
    with pytest.raises(
        BadInput,
        match=r"^profile .*/site.yaml: missing key .*regenerate.* \(a non-empty list of "
        r"strings \(an argv\)\): add it or `extends:` a profile that has it$",
    ):
        profiles.load_profile(path)


def test_missing_nested_key_is_quoted_like_an_unknown_nested_key(user_profile):
    data = yaml.safe_load(profiles.raw_profile_text("debian"))
    del data["initramfs"]["regenerate"]
    with pytest.raises(BadInput, match=r"missing key 'initramfs\.regenerate' "):
        profiles.load_profile(user_profile(data))


def test_extends_loop_is_reported(user_profile, tmp_path):
    user_profile({"extends": str(tmp_path / "b.yaml")}, "a.yaml")
    user_profile({"extends": str(tmp_path / "a.yaml")}, "b.yaml")
    with pytest.raises(BadInput, match="`extends` loops back to itself: remove the cycle"):
        profiles.load_profile(str(tmp_path / "a.yaml"))


def test_profile_file_that_does_not_exist_lists_the_builtin_names(tmp_path):
    with pytest.raises(BadInput) as error:
        profiles.load_profile(str(tmp_path / "nope.yaml"))
    assert str(error.value) == (
        f"profile file {tmp_path}/nope.yaml does not exist: give an existing YAML file or "
        "one of the built-in profiles: " + ", ".join(sorted(PROFILES))
    )


def test_invalid_profile_through_the_cli_exits_2_and_runs_nothing(two_disks, user_profile):
    path = user_profile({"extends": "debian", "colour": "blue"})
    before = two_disks.target_state()
    outcome = two_disks.cli("apply", "--yes", *two_disks.args(), "--profile", path)
    assert outcome.code == 2 and outcome.error.startswith(f"profile {path}: unknown key 'colour'")
    assert_only_read(outcome.calls)
    assert two_disks.target_state() == before


def test_profiles_command_lists_every_builtin_with_its_description(machine):
    outcome = machine.cli("profiles")
    assert outcome.code == 0
    assert [line.split()[0] for line in outcome.out.splitlines()] == sorted(PROFILES)
    assert "debian     Debian 12 and later (initramfs-tools, GRUB)\n" in outcome.out


def test_profiles_command_shows_one_profile_as_its_yaml(machine):
    outcome = machine.cli("profiles", "ubuntu")
    assert outcome.code == 0
    assert outcome.out.splitlines()[:2] == [
        f"# ubuntu: {profiles.load_profile('ubuntu').source}",
        "# merged with debian (extends): the profile as the planner uses it",
    ]
    assert "loader_id: ubuntu\n" in outcome.out and "esp_mountpoint: /boot/efi\n" in outcome.out  # debian's


@pytest.mark.parametrize(
    ("version", "release"),
    [("", ""), ("11", ""), ("12", "12"), ("13", "13"), ("13.2", "13"), ("14", "13")],
)
def test_the_targets_release_picks_the_highest_entry_not_above_it(version: str, release: str) -> None:
    profile = profiles.load_profile("debian", version)
    assert (profile.release, profile.version) == (release, version)
    assert profile.systemd_boot.shim is (release == "13")


def test_a_profile_that_extends_another_distribution_has_its_own_releases() -> None:
    """Ubuntu extends Debian, but its 24.04 is no Debian release above 13."""
    assert profiles.load_profile("ubuntu", "24.04").release == "22.04"
    assert profiles.load_profile("ubuntu", "24.04").systemd_boot.shim is False


def test_debian_13_enables_the_mdcheck_timers_and_12_leaves_the_cron_job() -> None:
    assert profiles.load_profile("debian", "12").periodic_check == ()
    assert profiles.load_profile("debian", "13").periodic_check == (
        ("systemctl", "enable", "mdcheck_start.timer", "mdcheck_continue.timer"),
    )


TRIXIE = 'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nNAME="Debian GNU/Linux"\nVERSION_ID="13"\nID=debian\n'
MDCHECK_UNIT = "[Timer]\nOnCalendar=weekly\n\n[Install]\nWantedBy=mdmonitor.service\n"  # installed, not enabled


def test_the_plan_names_the_release_it_planned_for_from_the_targets_os_release(two_disks) -> None:
    (two_disks.target / "etc/os-release").write_text(TRIXIE)
    (two_disks.target / "usr/lib/systemd/system/mdcheck_start.timer").write_text(MDCHECK_UNIT)
    (two_disks.target / "usr/lib/systemd/system/mdcheck_continue.timer").write_text(MDCHECK_UNIT)
    outcome = two_disks.cli("plan", *two_disks.args())
    assert outcome.code == 0, outcome.err
    assert outcome.out.splitlines()[1] == (
        "# planned for: Debian GNU/Linux 13 (trixie) (VERSION_ID 13): the profile's settings for release 13"
    )
    assert "systemctl enable mdcheck_start.timer mdcheck_continue.timer" in outcome.out
