"""What ``esp-mirror release --all`` takes away from the installed system: everything the
installed-system group (hooks/installed.py) put there that expects the mirror, per profile and
bootloader kind, callers before what they call; esp-mirror itself and its manual page stay.

Each case writes the group as apply would (its files, the links ``systemctl enable`` makes, the
bootctl diversion dpkg-divert makes, systemd-boot's masks), plans its removal, carries it out
with a runner that plays rm, systemctl and dpkg-divert in the target, and looks at what is left.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from conftest import ARRAY_UUID, PROFILES, Machine

from esp_mirror_plugin.hooks import anycaller, installed
from esp_mirror_plugin.pipeline import naming
from esp_mirror_plugin.pipeline.bootloaders import BootloaderKind
from esp_mirror_plugin.pipeline.execute import Applier
from esp_mirror_plugin.pipeline.profiles import load_profile
from esp_mirror_plugin.pipeline.steps import Command, EditBlock, Group, InstallProgram, LoadDebconf, WriteFile
from esp_mirror_plugin.system import files
from esp_mirror_plugin.system.recording import RecordingRunner
from esp_mirror_plugin.system.runner import Result
from esp_mirror_plugin.system.target import Target

DEVICE = "/dev/disk/by-id/virtio-espvm-A-part1"
KINDS = (BootloaderKind.GRUB, BootloaderKind.SYSTEMD_BOOT)


class Installed:
    """A target root on which the group was carried out, and a runner that plays its commands."""

    def __init__(self, machine: Machine, profile: str, kind: BootloaderKind, *, running: bool = True) -> None:
        self.root = machine.target
        self.running = running  # systemd runs the target: without it, --now and daemon-reload fail
        self.machine = machine
        if load_profile(profile).packages.install[0] in anycaller.APT:
            machine.add_target_programs("dpkg-divert")
        (self.root / "usr/bin").mkdir(parents=True, exist_ok=True)
        (self.root / "usr/bin/bootctl").write_text("the real bootctl\n")
        (self.root / "usr/lib/kernel").mkdir(parents=True)
        (self.root / "usr/lib/kernel/install.conf").write_text("layout=bls\n")
        (self.root / "etc/fwupd").mkdir(parents=True)
        (self.root / "etc/fwupd/fwupd.conf").write_text("[fwupd]\nDisabledPlugins=test\n")
        (self.root / "etc/environment").write_text("LANG=C.UTF-8\n")
        (self.root / "var/lib/dpkg").mkdir(parents=True)
        self.setup = installed.Setup(
            load_profile(profile),
            Target(str(self.root)),
            naming.mdadm_uuid(ARRAY_UUID),
            "/boot/efi",
            kind,
            load_profile(profile).loader_id,
            "/var/lib/prometheus/node-exporter",
            "/dev/md/esp",
            "C982-96CB",
        )
        self.runner = RecordingRunner(responders=[self.play])
        steps, _ = installed.plan(self.setup)
        self.planned = steps
        self.carry_out(steps)
        if kind is BootloaderKind.SYSTEMD_BOOT:  # what the bootloader's payload did: the seed writers masked
            self.play(("chroot", str(self.root), "systemctl", "mask", *installed.SEED_UNITS))

    def carry_out(self, steps: tuple) -> None:
        Applier(self.runner, io.StringIO()).execute(Group("g", tuple(steps)))

    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    def play(self, argv: tuple[str, ...]) -> Result:
        """rm, and in the target: systemctl enable/disable/mask/unmask/daemon-reload, dpkg-divert,
        debconf-set-selections, rc-update, as they leave the files."""
        if argv[:1] == ("chroot",):
            argv = argv[2:]
        if not self.running and argv[:1] == ("systemctl",) and ("--now" in argv or "daemon-reload" in argv):
            return Result(argv, 1, "", "System has not been booted with systemd as init system (PID 1). Can't operate.")
        units = self.root / "etc/systemd/system"
        match argv:
            case ("rm", "-f", "--", path):
                if os.path.lexists(path):
                    os.unlink(path)
            case ("systemctl", "enable" | "disable" as verb, *names):
                for name in (n for n in names if not n.startswith("-")):
                    wants = units / ("timers.target.wants" if name.endswith(".timer") else "multi-user.target.wants")
                    if verb == "enable":
                        wants.mkdir(parents=True, exist_ok=True)
                        (wants / name).symlink_to(units / name)
                    elif os.path.lexists(wants / name):
                        (wants / name).unlink()
            case ("systemctl", "mask", *names):
                units.mkdir(parents=True, exist_ok=True)
                for name in names:
                    (units / name).symlink_to("/dev/null")
            case ("systemctl", "unmask", *names):
                for name in names:
                    (units / name).unlink()
            case ("dpkg-divert", "--local", "--rename", "--divert", diverted, "--add", path):
                self.path(path).rename(self.path(diverted))
                self.path(anycaller.DIVERSIONS).write_text(f"{path}\n{diverted}\n:\n")
            case ("dpkg-divert", "--local", "--rename", "--remove", path):
                assert not self.path(path).exists(), "dpkg-divert --rename cannot put the real file back over another"
                self.path(anycaller.DIVERTED).rename(self.path(path))
                self.path(anycaller.DIVERSIONS).write_text("")
            case ("systemctl", "daemon-reload") | ("debconf-set-selections", _) | ("rc-update", *_):
                pass
            case _:
                raise AssertionError(f"unplayed: {argv}")
        return Result(argv, 0)


def written(steps: tuple) -> list[str]:
    """The files a plan writes whole (drop-ins, scripts, the program)."""
    return [s.path for s in steps if isinstance(s, WriteFile | InstallProgram)]


def edited(steps: tuple) -> list[str]:
    return [s.path for s in steps if isinstance(s, EditBlock)]


@pytest.mark.parametrize("running", [True, False], ids=["systemd-running", "chroot-or-rescue"])
@pytest.mark.parametrize("kind", KINDS, ids=str)
@pytest.mark.parametrize("profile", PROFILES)
def test_release_all_takes_away_everything_the_group_installed_but_esp_mirror_itself(machine, profile, kind, running):
    done = Installed(machine, profile, kind, running=running)
    steps, notes = installed.removal(done.setup, DEVICE, running=running)
    done.carry_out(steps)

    keep = {str(done.path(p)) for p in (installed.heal.PROGRAM, installed.MANUAL, installed.COMPLETION)}
    real = str(done.path(anycaller.BOOTCTL))  # the wrapper's path: the real bootctl is back there
    left = [p for p in written(done.planned) if os.path.lexists(p) and p not in keep | {real}]
    preseed = str(done.path("etc/esp-mirror/debconf.preseed"))
    assert left == [], left
    assert all(os.path.exists(p) for p in keep)
    assert not os.path.lexists(preseed)
    for path in edited(done.planned):  # the blocks are gone; what else the file held stays
        assert not os.path.exists(path) or files.split_block(Path(path).read_text())[1] is None, path
    assert (done.root / "etc/environment").read_text() == "LANG=C.UTF-8\n"
    assert (done.root / "etc/fwupd/fwupd.conf").read_text() == "[fwupd]\nDisabledPlugins=test\n"
    assert not (done.root / anycaller.INSTALL_CONF.lstrip("/")).exists()  # made by esp-mirror: /usr/lib's is read
    assert (done.root / "usr/bin/bootctl").read_text() == "the real bootctl\n"
    assert not (done.root / anycaller.DIVERTED.lstrip("/")).exists()
    links = [p for p in (done.root / "etc/systemd/system").rglob("*") if p.is_symlink()]
    ours = [str(p.relative_to(done.root)) for p in links if "esp-mirror" in p.name or os.readlink(p) == "/dev/null"]
    assert ours == []  # no unit of ours enabled, nothing masked; the distribution's md check stays enabled
    assert notes[-1].startswith(f"{installed.heal.PROGRAM} and its manual page stay")


def test_without_systemd_running_the_timers_are_only_disabled_and_systemd_is_not_reloaded(machine):
    done = Installed(machine, "debian", BootloaderKind.GRUB, running=False)
    steps, _ = installed.removal(done.setup, DEVICE, running=False)
    systemctl = [s.argv for s in steps if isinstance(s, Command) and s.argv[0] == "systemctl"]
    assert systemctl == [
        ("systemctl", "disable", "esp-mirror-heal.service"),
        ("systemctl", "disable", "esp-mirror-check.timer"),
        ("systemctl", "disable", "esp-mirror-metrics.timer"),
    ]


@pytest.mark.parametrize("kind", KINDS, ids=str)
@pytest.mark.parametrize("profile", PROFILES)
def test_the_removal_run_again_plans_nothing(machine, profile, kind):
    done = Installed(machine, profile, kind)
    done.carry_out(installed.removal(done.setup, DEVICE, running=True)[0])
    if profile == "ubuntu":  # what debconf-set-selections left in the database
        database = done.root / "var/cache/debconf/config.dat"
        database.write_text(f"Name: grub-efi/install_devices\nTemplate: grub-efi/install_devices\nValue: {DEVICE}\n")
    assert installed.removal(done.setup, DEVICE, running=True)[0] == ()


def test_ubuntus_install_devices_answer_names_the_partition_that_stays_the_esp(machine):
    done = Installed(machine, "ubuntu", BootloaderKind.GRUB)
    steps, _ = installed.removal(done.setup, DEVICE, running=True)
    [preseed] = [s for s in steps if isinstance(s, WriteFile)]
    [load] = [s for s in steps if isinstance(s, LoadDebconf)]
    assert preseed.content.splitlines()[1:] == [f"grub-efi-amd64 grub-efi/install_devices multiselect {DEVICE}"]
    assert load.answers == (("grub-efi/install_devices", DEVICE),)
    assert steps.index(load) < steps.index(
        next(s for s in steps if isinstance(s, Command) and s.argv[-1] == preseed.path)
    )  # the file goes once it is loaded


def test_debian_keeps_its_other_answers_they_mean_the_same_on_a_plain_esp(machine):
    done = Installed(machine, "debian", BootloaderKind.GRUB)
    steps, _ = installed.removal(done.setup, DEVICE, running=True)
    assert not [s for s in steps if isinstance(s, LoadDebconf | WriteFile)]
