"""What apply leaves on the installed system so the mirror stays whole without anyone: esp-mirror
itself, heal at boot and on hot-plug, and the settings package upgrades read (debconf, bootctl's
relaxed ESP checks, fwupd's ESP location) — per profile — and the refusals before any change.

The machine is the ``two_disks`` fixture (a target root with python3 3.11, the programs the
installed esp-mirror runs, a debconf database); each test changes what the target has.
"""

from __future__ import annotations

import configparser
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import zipfile

import pytest
from conftest import ARRAY_UUID, PROFILES, Machine, assert_only_read, plan_of

from esp_mirror_plugin.hooks import heal, installed, upgrades
from esp_mirror_plugin.pipeline import naming
from esp_mirror_plugin.pipeline.bootloaders import BootloaderKind
from esp_mirror_plugin.pipeline.profiles import load_profile
from esp_mirror_plugin.system import files, zipapp
from esp_mirror_plugin.system.target import Target

SYSTEMD_HEAL = [
    ("write", "etc/systemd/system/esp-mirror-heal.service"),
    ("write", "etc/systemd/system/esp-mirror-heal@.service"),
    ("write", "etc/udev/rules.d/65-esp-mirror-heal.rules"),
    ("run", "systemctl", "enable", "esp-mirror-heal.service"),
]
OPENRC_HEAL = [("write", "etc/local.d/esp-mirror-heal.start"), ("run", "rc-update", "add", "local", "default")]
DEBCONF = [("write", "etc/esp-mirror/debconf.preseed"), ("run", "debconf-set-selections", PRESEED := upgrades.PRESEED)]
PROGRAM = [
    ("install", "usr/local/sbin/esp-mirror"),
    ("install", "usr/local/share/man/man8/esp-mirror.8"),
    ("install", "usr/local/share/bash-completion/completions/esp-mirror"),
]
OWN_TIMER = [
    ("write", "etc/systemd/system/esp-mirror-check.service"),
    ("write", "etc/systemd/system/esp-mirror-check.timer"),
    ("run", "systemctl", "enable", "esp-mirror-check.timer"),
    ("write", "etc/systemd/system/esp-mirror-metrics.service"),
    ("write", "etc/systemd/system/esp-mirror-metrics.timer"),
    ("run", "systemctl", "enable", "esp-mirror-metrics.timer"),
]
MDCHECK = [("run", "systemctl", "enable", "mdcheck_start.timer", "mdcheck_continue.timer")]
APT_GUARD = [("write", "usr/local/lib/esp-mirror/esp-mounted"), ("write", "etc/apt/apt.conf.d/90esp-mirror")]
RAID_CHECK = [("run", "systemctl", "enable", "raid-check.timer")]
CRON = [("write", "etc/cron.weekly/esp-mirror-check"), ("write", "etc/cron.hourly/esp-mirror-metrics")]
# The installed-system group of each profile (with --bootloader grub, no bootctl in the target). The
# weekly esp-mirror-check.timer is everywhere systemd runs: with md's check where the distribution
# has none (opensuse), with --no-md-check beside the distribution's (hooks/periodic.py); the
# metrics are refreshed beside it (esp-mirror-metrics.timer, or a cron.hourly/periodic 15min script).
GROUP = {
    "debian": PROGRAM + OWN_TIMER + SYSTEMD_HEAL + DEBCONF + APT_GUARD,
    "ubuntu": PROGRAM + MDCHECK + OWN_TIMER + SYSTEMD_HEAL + DEBCONF + APT_GUARD,
    "fedora": PROGRAM + RAID_CHECK + OWN_TIMER + SYSTEMD_HEAL,
    "rhel": PROGRAM + RAID_CHECK + OWN_TIMER + SYSTEMD_HEAL,
    "opensuse": PROGRAM + OWN_TIMER + SYSTEMD_HEAL,
    "arch": PROGRAM + MDCHECK + OWN_TIMER + SYSTEMD_HEAL,
    "gentoo": [*PROGRAM, ("run", "rc-update", "add", "mdraid", "boot"), *CRON, *OPENRC_HEAL],
    "alpine": [
        *PROGRAM,
        ("run", "rc-update", "add", "mdadm-raid", "boot"),
        ("write", "etc/periodic/weekly/esp-mirror-check"),
        ("write", "etc/periodic/15min/esp-mirror-metrics"),
        *OPENRC_HEAL,
    ],
    "void": [*PROGRAM, *CRON, ("edit", "etc/rc.local")],
}


def group(plan: dict, name: str = installed.GROUP) -> dict:
    return next(g for g in plan["groups"] if g["name"] == name)


def described(machine: Machine, steps: list[dict]) -> list[tuple[str, ...]]:
    """Each step as (kind, path in the target) or ("run", argv in the target...)."""
    target = str(machine.target)
    out: list[tuple[str, ...]] = []
    for s in steps:
        if s["kind"] == "load-debconf":
            s = s["load"]
        if s["kind"] == "command":
            if s["argv"][:1] == ["mount"]:
                continue  # the chroot binds
            assert s["argv"][:2] == ["chroot", target], s
            out.append(("run", *s["argv"][2:]))
        else:
            kind = {"write-file": "write", "edit-block": "edit", "install-program": "install"}[s["kind"]]
            out.append((kind, os.path.relpath(s["path"], target)))
    return out


def test_every_profile_is_specified_here():
    assert sorted(GROUP) == sorted(PROFILES)


@pytest.mark.parametrize("profile", PROFILES)
def test_the_installed_system_group_per_profile(two_disks, profile):
    plan = plan_of(two_disks, "--profile", profile)
    assert described(two_disks, group(plan)["steps"]) == GROUP[profile]
    assert [g["name"] for g in plan["groups"]][-2:] == ["installed-system", "cleanup"]


# -- esp-mirror on the installed system -------------------------------------------------------


def test_the_program_is_this_esp_mirror_as_one_zip_application_shown_with_its_checksum(two_disks):
    [step, _, _] = [s for s in group(plan_of(two_disks))["steps"] if s["kind"] == "install-program"]
    app = zipapp.build()
    assert (step["path"], step["mode"]) == (f"{two_disks.target}/usr/local/sbin/esp-mirror", "0755")
    assert (step["size"], step["sha256"]) == (len(app.data), hashlib.sha256(app.data).hexdigest())
    assert step["summary"].startswith("esp-mirror as one Python zip application (esp-mirror-plugin ")


def test_apply_writes_the_program_executable_and_a_second_apply_leaves_it(images):
    assert images.cli("apply", "--yes", *images.args()).code == 0
    program = images.target / "usr/local/sbin/esp-mirror"
    assert program.read_bytes() == zipapp.build().data
    assert stat.S_IMODE(program.stat().st_mode) == 0o755
    again = images.cli("apply", "--yes", *images.args())
    assert again.code == 0
    lines = again.out.splitlines()
    at = next(i for i, line in enumerate(lines) if "[installed-system] install " in line)
    assert lines[at + 1].split()[1:2] == ["unchanged"], lines[at : at + 2]


def test_the_zip_application_is_the_same_bytes_every_time_and_holds_what_it_runs_with():
    first, second = zipapp.build.__wrapped__(), zipapp.build.__wrapped__()
    assert first.data == second.data and first.data.startswith(b"#!/usr/bin/env python3\n")
    names = zipfile.ZipFile(io.BytesIO(first.data)).namelist()
    assert "__main__.py" in names and zipapp.VERSIONS in names
    for module in ("esp_mirror_plugin/cli/__init__.py", "pluggy/__init__.py", "yaml/__init__.py", "sh/__init__.py"):
        assert module in names, module
    assert {f"esp_mirror_plugin/profiles/{p}.yaml" for p in PROFILES} <= set(names)
    assert not any("__pycache__" in n for n in names)
    # every module has its bytecode beside it (zipimport's layout)
    assert {n for n in names if n.endswith(".pyc")} == {f"{n}c" for n in names if n.endswith(".py")}
    assert [name for name, _ in first.versions] == ["esp-mirror-plugin", "pluggy", "PyYAML", "sh"]


@pytest.mark.real_processes
def test_the_zip_application_runs_its_bytecode_without_compiling_the_sources(tmp_path):
    """Each source is replaced by one that would fail: the run still works, from the bytecode."""
    built = zipfile.ZipFile(io.BytesIO(zipapp.build.__wrapped__().data))
    app = tmp_path / "esp-mirror"
    with zipfile.ZipFile(app, "w") as broken:
        for info in built.infolist():
            data = built.read(info)
            if info.filename.endswith(".py") and info.filename != "__main__.py":
                data = b"raise SystemExit('compiled from source')\n"
            broken.writestr(info, data)
    for argv in (["--version"], ["profiles"]):
        run = subprocess.run([sys.executable, str(app), *argv], capture_output=True, text=True, check=False)
        assert (run.returncode, run.stderr) == (0, ""), argv


@pytest.mark.real_processes
def test_the_zip_application_runs_and_rebuilds_itself_byte_for_byte(tmp_path):
    app = tmp_path / "esp-mirror"
    app.write_bytes(zipapp.build().data)
    version = subprocess.run([sys.executable, str(app), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("esp-mirror ")
    profiles = subprocess.run([sys.executable, str(app), "profiles"], capture_output=True, text=True, check=True)
    assert "debian" in profiles.stdout and "alpine" in profiles.stdout
    # run from the zip application, esp-mirror puts exactly that file on the next system it sets up
    inner = "from esp_mirror_plugin.system import zipapp; print(zipapp.build().sha256)"
    rebuilt = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(app)!r}); {inner}"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert rebuilt.stdout.strip() == hashlib.sha256(app.read_bytes()).hexdigest()


# -- a target without a usable Python -----------------------------------------------------------


def remove_python(machine: Machine) -> None:
    for name in ("python3", "python3.11"):
        (machine.target / "usr/bin" / name).unlink()


def test_without_python_the_plan_says_upkeep_runs_from_outside_and_installs_no_program(two_disks):
    remove_python(two_disks)
    steps = group(plan_of(two_disks))
    assert described(two_disks, steps["steps"]) == DEBCONF + APT_GUARD  # no program, no heal units, no timer
    assert steps["notes"][0] == (
        "the target has no python3: esp-mirror is not put on the installed system, so nothing heals a "
        "member that comes back, no weekly esp-mirror check compares the members and nothing writes metrics; run "
        "status, check, repair and heal from outside (a rescue system, chroot)"
    )


@pytest.mark.parametrize(
    ("python", "problem"),
    [
        (None, "the target has no python3"),
        (("3.9", ""), "/usr/bin/python3 is Python 3.9; esp-mirror needs 3.11 or later"),
        (("3.12", "json/__init__.py"), "Python 3.12 at /usr/bin/python3 lacks its standard library (json is missing)"),
    ],
    ids=["none", "too-old", "no-stdlib"],
)
@pytest.mark.parametrize("profile", ["opensuse", "void", "gentoo", "alpine"])
def test_a_profile_whose_weekly_check_is_esp_mirrors_refuses_without_python(two_disks, profile, python, problem):
    remove_python(two_disks)
    if python:
        two_disks.add_target_python(*python)
    before = two_disks.target_state()

    outcome = two_disks.cli("apply", "--yes", *two_disks.args(), "--profile", profile)

    assert outcome.code == 2
    assert outcome.error == (
        f"{problem}, and the {profile} profile's weekly check runs esp-mirror there: install Python 3.11 or "
        f"later in the target (`{load_profile(profile).install_hint('python3')}`) and run again"
    )
    assert_only_read(outcome.calls)
    assert two_disks.target_state() == before


def test_missing_programs_of_the_installed_esp_mirror_are_named_with_their_packages(two_disks):
    for name in ("mcopy", "mdir", "fsck.fat"):
        (two_disks.target / "usr/sbin" / name).unlink()
    notes = group(plan_of(two_disks))["notes"]
    assert notes[0] == (
        "the installed esp-mirror needs mdir, mcopy, fsck.fat, which the target lacks: install them "
        "(`apt-get install --yes mtools dosfstools`) or its upkeep commands fail"
    )


# -- heal: at boot and on hot-plug ------------------------------------------------------------------


def test_the_udev_rule_matches_members_of_this_array_by_the_uuid_blkid_reports():
    rule = heal.udev_rule(ARRAY_UUID)
    dashed = "a2824bdc-e2f9-5aef-83df-651fbf2ea709"  # blkid's UUID of a member of ARRAY_UUID (VM capture)
    assert f'ENV{{ID_FS_UUID}}=="{dashed}"' in rule
    assert 'ENV{ID_FS_TYPE}=="linux_raid_member"' in rule and 'ACTION=="add"' in rule
    assert rule.rstrip().endswith('ENV{SYSTEMD_WANTS}+="esp-mirror-heal@%k.service"')


def test_the_units_run_heal_at_boot_without_holding_up_multi_user_and_per_partition_after_it():
    assert "ExecStart=/usr/local/sbin/esp-mirror heal --why boot --wait 60" in heal.SERVICE
    assert "DefaultDependencies=no" in heal.SERVICE and "WantedBy=multi-user.target" in heal.SERVICE
    assert "ExecStart=/usr/local/sbin/esp-mirror heal --why hot-plug --device /dev/%I" in heal.TEMPLATE
    assert "After=local-fs.target esp-mirror-heal.service" in heal.TEMPLATE
    assert "ConditionPathExistsGlob=!/sys/class/block/%I/holders/*" in heal.TEMPLATE


def test_the_rule_carries_the_uuid_of_the_array_apply_makes(two_disks):
    plan = plan_of(two_disks)
    [rule] = [s for s in group(plan)["steps"] if s.get("path", "").endswith("65-esp-mirror-heal.rules")]
    assert heal.udev_rule(plan["array"]["uuid"]) == rule["content"]


def test_openrc_and_runit_heal_at_boot_in_the_background_and_say_hot_plug_needs_a_command(two_disks):
    alpine = group(plan_of(two_disks, "--profile", "alpine"))
    [start] = [s for s in alpine["steps"] if s.get("path", "").endswith("esp-mirror-heal.start")]
    assert (start["content"], start["mode"]) == (heal.OPENRC, "0755")
    void = group(plan_of(two_disks, "--profile", "void"))
    [block] = [s for s in void["steps"] if s["kind"] == "edit-block"]
    assert block["block"] == "/usr/local/sbin/esp-mirror heal --why boot 2>&1 | logger -t esp-mirror-heal &"
    for notes, init in ((alpine["notes"], "openrc"), (void["notes"], "runit")):
        assert notes[0] == (
            f"heal runs at boot; on hot-plug: {init} has no udev-to-service hook here, so run "
            "`esp-mirror heal` after plugging a disk in"
        )


# -- debconf ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["debian", "ubuntu"])
def test_debconf_answers_are_a_file_and_loaded_into_the_targets_database(two_disks, profile):
    plan = plan_of(two_disks, "--profile", profile)
    [preseed] = [s for s in group(plan)["steps"] if s.get("path", "").endswith("debconf.preseed")]
    lines = [line for line in preseed["content"].splitlines() if not line.startswith("#")]
    expected = [
        "grub-efi-amd64 grub2/update_nvram boolean false",
        "grub-efi-amd64 grub2/force_efi_extra_removable boolean true",
    ]
    if profile == "ubuntu":  # grub-multi-install: the array's by-id link, never a member
        expected += [
            "grub-efi-amd64 grub2/no_efi_extra_removable boolean false",
            f"grub-efi-amd64 grub-efi/install_devices multiselect /dev/disk/by-id/md-uuid-{plan['array']['uuid']}",
            "grub-efi-amd64 grub-efi/install_devices_empty boolean false",
        ]
    assert lines == expected


def test_an_unwritable_debconf_database_is_refused_before_any_change(two_disks, monkeypatch):
    database = str(two_disks.target / upgrades.DEBCONF_DB)
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == database else real(path, mode))
    before = two_disks.target_state()

    outcome = two_disks.cli("apply", "--yes", *two_disks.args())

    assert (outcome.code, outcome.error) == (
        2,
        f"the debconf database {database} cannot be written: it is not writable (permissions or the "
        "immutable attribute); make it writable (remount read-write, finish or kill a running apt/dpkg) "
        "and run again",
    )
    assert_only_read(outcome.calls)
    assert two_disks.target_state() == before


# -- bootctl's relaxed ESP checks ------------------------------------------------------------------


RELAXED = [
    ("edit", "etc/environment"),
    ("write", "etc/systemd/system.conf.d/90-esp-mirror.conf"),
    ("write", "etc/systemd/system/systemd-boot-update.service.d/90-esp-mirror.conf"),
]


@pytest.mark.parametrize(
    ("profile", "bootloader", "bootctl", "expected"),
    [
        ("debian", "systemd-boot", False, RELAXED),
        ("arch", "systemd-boot", False, RELAXED),
        ("debian", "grub", True, RELAXED),  # systemd-boot installed: its hooks run bootctl anyway
        ("debian", "grub", False, []),
        ("gentoo", "systemd-boot", False, RELAXED[:1]),  # no systemd: only pam_env's file
    ],
)
def test_bootctl_gets_relaxed_esp_checks_where_it_runs_on_its_own(two_disks, profile, bootloader, bootctl, expected):
    if bootctl:
        two_disks.add_target_programs("bootctl")
    steps = described(two_disks, group(plan_of(two_disks, "--profile", profile, "--bootloader", bootloader))["steps"])
    assert [s for s in steps if s in RELAXED] == expected


def test_the_relaxed_checks_reach_services_logins_and_the_update_unit(two_disks):
    steps = group(plan_of(two_disks, "--bootloader", "systemd-boot"))["steps"]
    files_ = [s for s in steps if "path" in s]
    text = {os.path.relpath(s["path"], two_disks.target): s.get("content", s.get("block")) for s in files_}
    assert text["etc/environment"] == "SYSTEMD_RELAX_ESP_CHECKS=1"
    assert text["etc/systemd/system.conf.d/90-esp-mirror.conf"].endswith(
        "[Manager]\nDefaultEnvironment=SYSTEMD_RELAX_ESP_CHECKS=1\n"
    )
    assert text["etc/systemd/system/systemd-boot-update.service.d/90-esp-mirror.conf"].endswith(
        "[Service]\nEnvironment=SYSTEMD_RELAX_ESP_CHECKS=1\n"
    )


# -- fwupd ----------------------------------------------------------------------------------------------


def fwupd_files(machine: Machine, **texts: str) -> None:
    (machine.target / "etc/fwupd").mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (machine.target / "etc/fwupd" / f"{name}.conf").write_text(text)


def fwupd_steps(machine: Machine, *argv: str) -> dict[str, str]:
    steps = group(plan_of(machine, *argv))["steps"]
    return {os.path.relpath(s["path"], machine.target): s["block"] for s in steps if "/fwupd/" in s.get("path", "")}


def test_fwupd_1_9_and_later_gets_esp_location_in_fwupd_conf(two_disks):
    fwupd_files(two_disks, fwupd="[fwupd]\n# use the UDisks2 ESP\nDisabledPlugins=test;invalid\n")
    assert fwupd_steps(two_disks) == {"etc/fwupd/fwupd.conf": "[fwupd]\nEspLocation=/boot/efi"}


def test_fwupd_1_8_gets_both_keys_its_releases_read(two_disks):
    capsule = "[uefi_capsule]\n#OverrideESPMountPoint=\n"
    fwupd_files(two_disks, daemon="[fwupd]\nVerboseDomains=\n", uefi_capsule=capsule)
    assert fwupd_steps(two_disks, "--profile", "arch") == {
        "etc/fwupd/daemon.conf": "[fwupd]\nEspLocation=/efi",
        "etc/fwupd/uefi_capsule.conf": "[uefi_capsule]\nOverrideESPMountPoint=/efi",
    }


def test_fwupd_already_told_the_same_place_needs_nothing(two_disks):
    fwupd_files(two_disks, fwupd="[fwupd]\nEspLocation=/boot/efi\n")
    assert fwupd_steps(two_disks) == {}


def test_a_conflicting_fwupd_setting_is_refused_before_any_change(two_disks):
    fwupd_files(two_disks, fwupd="[fwupd]\nEspLocation=/boot\n")
    before = two_disks.target_state()
    outcome = two_disks.cli("apply", "--yes", *two_disks.args())
    assert (outcome.code, outcome.error) == (
        2,
        f"{two_disks.target}/etc/fwupd/fwupd.conf sets EspLocation=/boot in [fwupd], not the mirrored ESP "
        "/boot/efi: remove that line (esp-mirror sets EspLocation) or mount the ESP there",
    )
    assert two_disks.target_state() == before


def test_fwupd_writes_land_under_its_own_section_when_applied(images):
    fwupd_files(images, fwupd="[fwupd]\nDisabledPlugins=test\n\n[redfish]\nIpmiDisableCreateUser=False\n")
    assert images.cli("apply", "--yes", *images.args()).code == 0
    text = (images.target / "etc/fwupd/fwupd.conf").read_text()

    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(text)
    assert parser.get("fwupd", "EspLocation") == "/boot/efi" and parser.get("fwupd", "DisabledPlugins") == "test"
    assert files.split_block(text)[1] == "[fwupd]\nEspLocation=/boot/efi\n"


def test_without_fwupd_the_plan_says_what_to_run_when_it_comes(two_disks):
    assert group(plan_of(two_disks))["notes"] == [
        "fwupd is not installed: if it is installed later, run `esp-mirror refresh` so it finds the ESP at "
        "/boot/efi (status and check report it until then)"
    ]


# -- the planner itself ---------------------------------------------------------------------------


def test_the_group_is_planned_from_a_setup_the_record_can_give_too(tmp_path):
    target = Target(str(tmp_path))
    setup = installed.Setup(load_profile("debian"), target, naming.mdadm_uuid(ARRAY_UUID), "/boot/efi",
                            BootloaderKind.GRUB, "debian", "/var/lib/prometheus/node-exporter", "/dev/md/esp",
                            "C982-96CB")  # fmt: skip
    steps, notes = installed.plan(setup)
    # no python3, no debconf there: the preseed, and apt's guard of the ESP (a shell script)
    assert [os.path.relpath(s.path, tmp_path) for s in steps] == [  # type: ignore[union-attr]
        "etc/esp-mirror/debconf.preseed",
        "usr/local/lib/esp-mirror/esp-mounted",
        "etc/apt/apt.conf.d/90esp-mirror",
    ]
    assert notes[0].startswith("the target has no python3")


def test_a_target_without_debconf_yet_gets_the_preseed_file_and_a_note_not_a_refusal(two_disks):
    """A CI image root before its packages: refusing would stop the image build for nothing."""
    (two_disks.target / "usr/sbin/debconf-set-selections").unlink()
    outcome = two_disks.cli("plan", *two_disks.args(), "--json")
    assert outcome.code == 0, outcome.err
    planned = group(json.loads(outcome.out))
    assert [s["path"] for s in planned["steps"] if s["kind"] == "write-file" and "debconf." in s["path"]] == [
        f"{two_disks.target}/etc/esp-mirror/debconf.preseed"
    ]
    assert not any(
        s["kind"] == "command" and s["argv"][-2:] == ["debconf-set-selections", "/etc/esp-mirror/debconf.preseed"]
        for s in planned["steps"]
    )
    assert any(
        n.startswith("debconf is not in the target yet: /etc/esp-mirror/debconf.preseed is written but not loaded")
        for n in planned["notes"]
    )


def test_a_loader_id_other_than_the_distributions_says_what_grub_upgrades_miss(two_disks):
    notes = group(plan_of(two_disks, "--loader-id", "site"))["notes"]
    assert notes[-1] == (
        "--loader-id site: the GRUB packages' upgrades install into \\EFI\\debian\\ (GRUB_DISTRIBUTOR), and "
        "only when it exists, never into \\EFI\\site\\ which the boot entries start; set "
        "GRUB_DISTRIBUTOR=site in /etc/default/grub so upgrades update it"
    )
    assert not any(
        "--loader-id" in n for n in group(plan_of(two_disks, "--profile", "fedora", "--loader-id", "x"))["notes"]
    )


CONFIG_DAT = """Name: grub2/force_efi_extra_removable
Template: grub2/force_efi_extra_removable
Value: true
Owners: grub-efi-amd64
Flags: seen

Name: grub2/update_nvram
Template: grub2/update_nvram
Value: {nvram}
Owners: grub-efi-amd64
Flags: seen
"""


@pytest.mark.parametrize(("nvram", "loads"), [("false", False), ("true", True)])
def test_debconf_answers_are_loaded_only_when_the_database_lacks_one(images, nvram, loads):
    """debconf-set-selections is seconds of perl on a slow machine: a second apply skips it when
    debconf's config.dat holds every answer already, and loads when one differs."""
    (images.target / "var/cache/debconf/config.dat").write_text(CONFIG_DAT.format(nvram=nvram))
    outcome = images.cli("apply", "--yes", *images.args())
    assert outcome.code == 0, outcome.err
    load = ("chroot", str(images.target), "debconf-set-selections", "/etc/esp-mirror/debconf.preseed")
    assert (load in outcome.calls) is loads


def test_the_heal_service_and_the_timers_enabled_already_are_not_enabled_again(two_disks):
    """systemctl enable runs (and counts as a change) only while its link is missing."""
    system = two_disks.target / "etc/systemd/system"
    for wants, unit in (
        ("multi-user.target", "esp-mirror-heal.service"),
        ("timers.target", "esp-mirror-check.timer"),
        ("timers.target", "esp-mirror-metrics.timer"),
    ):
        (system / f"{wants}.wants").mkdir(parents=True, exist_ok=True)
        (system / f"{wants}.wants" / unit).symlink_to(f"/etc/systemd/system/{unit}")
    steps = group(plan_of(two_disks))["steps"]
    assert not [s for s in steps if s["kind"] == "command" and "enable" in s["argv"]]
