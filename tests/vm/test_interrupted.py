"""Killed at any step, the same command run again ends right: apply, replace and repair.

Two guests at once run ``ci/interrupt.py`` (see there), half of the work each: for every step of
each command, the whole process group is killed with SIGKILL 0.3 s after the step started, the same
command runs again, and the mirror is checked. The counts go to the measured-times table.
Then the power is cut (no sync) during mkfs and during the resync, and the same apply ends right.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ci import interrupt
from ci.measure import measurements
from ci.vm import Assets, blank_disk, boot_firmware, fresh_vars, partition_uuid, run_in_guest
from ci.vm.initrd import GUEST_WORK_DIR
from ci.vm.scripts import REPO_ROOT
from esp_mirror_plugin.system import zipapp

pytestmark = pytest.mark.vm


# ESP_MIRROR_KILLLOOP=adopt (a comma-separated list of apply, replace, repair, adopt, shared,
# copy-table, release): only those loops, to try them again by hand after a change
ONLY = tuple(os.environ.get("ESP_MIRROR_KILLLOOP", ",".join(interrupt.COMMANDS)).split(","))


@pytest.fixture(scope="module")
def interruptions(vm_assets: Assets, module_dir: Path) -> list[dict]:
    """Both halves of ci/interrupt.py's work, in two guests at once (each keeps one core busy)."""
    work = module_dir
    # what apply installs is only copied here, never booted: a small EFI binary keeps the copies short
    efi = vm_assets.efi_stub
    # the zip application apply installs, run by the guest's python3: one file over 9p instead of
    # the venv's hundreds (3 s less per run under TCG, ci/bench)
    cli = work / "esp-mirror"
    cli.write_bytes(zipapp.build().data)
    cli.chmod(0o755)

    def half(number: int) -> list[dict]:
        disks = [blank_disk(work / f"half{number}-disk-{n}.img", 256) for n in ("abc" if number == 1 else "ab")]
        nvram = fresh_vars(work / f"half{number}-vars.fd", vm_assets)
        driver = shlex.join([sys.executable, "-m", "ci.interrupt", str(efi), str(number), str(cli), ",".join(ONLY)])
        script = f"cd {shlex.quote(str(REPO_ROOT))}\nexec {driver}\n"
        guest = run_in_guest(script, disks, nvram, timeout=7200, assets=vm_assets, log_dir=work)  # a half: ~1 h
        assert guest.rc == 0, guest.stdout + guest.stderr
        return [json.loads(line) for line in guest.stdout.splitlines() if line.startswith("{")]

    with ThreadPoolExecutor(2) as pool:
        return [r for results in pool.map(half, (1, 2)) for r in results]


@pytest.mark.killloop
def test_every_interrupted_apply_replace_and_repair_converges_when_run_again(interruptions, request):
    results = [r for r in interruptions if "command" in r]
    loops = {  # each loop's name in the results: its name in ESP_MIRROR_KILLLOOP
        "apply": "apply",
        "replace": "replace",
        "repair": "repair",
        "adopt (blank disk)": "adopt",
        "adopt (stale ESP in place)": "adopt",
        "apply (partitions there)": "shared",
        "replace (table copy)": "copy-table",
        "release --all": "release",
    }
    names = tuple(name for name, key in loops.items() if key in ONLY)
    for name in names:
        mine = [r for r in results if r["command"] == name]
        converged = sum(1 for r in mine if r["converged"])
        measurements(request.config).record(
            "interrupted",
            f"{name}: {converged} of {len(mine)} interruptions converged",
            sum(r["seconds"] for r in mine),
            "kill at each step, run again, check",
        )
    steps = {name: sorted(r["step"] for r in results if r["command"] == name) for name in names}
    assert all(numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 8 for numbers in steps.values()), steps
    failed = [(r["command"], r["step"], r["killed_in"], r["wrong"]) for r in results if not r["converged"]]
    assert failed == [], "\n".join(map(repr, failed))
    # every step was really interrupted: the kill came while the command ran, not after it ended
    assert [(r["command"], r["step"]) for r in results if r["killed_in"] is None] == []


def test_power_cut_during_mkfs_then_during_the_resync_and_the_same_apply_still_ends_right(
    vm_assets: Assets, tmp_path: Path, request
):
    """The machine is reset without a sync (sysrq b) while apply formats the array, booted again
    and cut again while apply waits for the resync, booted a third time: the same apply ends with
    a whole mirror."""
    disks = [blank_disk(tmp_path / f"disk-{n}.img", 256) for n in "ab"]
    nvram = fresh_vars(tmp_path / "vars.fd", vm_assets)
    cut_file = f"{GUEST_WORK_DIR}/cut"
    cuts = {}
    for during in ("mkfs", "resync"):
        script = interrupt.power_cut_script(str(vm_assets.efi_stub), during, cut_file)
        guest = run_in_guest(script, disks, nvram, timeout=600, assets=vm_assets, power_cut=True)
        cut = guest.serial_log.parent / "share" / "cut"
        assert cut.exists(), f"apply ended before the power cut during {during}:\n{guest.stdout}{guest.stderr}"
        cuts[during] = cut.read_text()
        assert f"POWER-CUT during {during}" in cuts[during]
        # /proc/mdstat at the cut: md was copying ("resync = 3.1% (2048/65472) ...")
        assert re.search(r"resync\s*=\s*[0-9.]+%", cuts[during]), cuts[during]

    apply = shlex.join(interrupt.apply_argv(str(vm_assets.efi_stub)))
    check = f"{shlex.quote(sys.executable)} -m ci.interrupt check {vm_assets.efi_stub} /dev/vda /dev/vdb"
    # the members' superblocks say the resync is owed ("active", not "clean"): assembled, the array
    # is read-auto and md shows "idle" with the resync pending, where `mdadm --wait` waited for ever
    owed = "mdadm --examine /dev/vda1 | grep -E '^ +State :'"  # "active": resync_offset is not MaxSector
    script = f"set -eu\ncd {shlex.quote(str(REPO_ROOT))}\n{owed}\n{apply} 2>&1\n{check}\n"
    started = time.monotonic()
    guest = run_in_guest(script, disks, nvram, timeout=600, assets=vm_assets)
    measurements(request.config).record(
        "interrupted", "power cut twice, then apply to the end", time.monotonic() - started
    )

    assert guest.rc == 0, guest.stdout + guest.stderr
    assert guest.stdout.splitlines()[0].split() == ["State", ":", "active"], guest.stdout
    assert json.loads(guest.stdout.splitlines()[-1]) == {"wrong": []}, guest.stdout


REFUSED = {
    "not-fat": "the live ESP /dev/vda2 holds linux_raid_member, not FAT: esp-mirror adopts a FAT ESP only",
    "damaged": "fsck.fat -n finds damage on the live ESP /dev/vda1 (",
    "too-small": "the ESP partition /dev/vdd1 (20 MiB) is too small for FAT32 plus the md superblock",
    "sector-sizes": "disks have different logical sector sizes (/dev/vda=512, /dev/vdb=512, /dev/loop",
    "mounted-twice": "the live ESP /dev/vda1 is mounted twice (/target/boot/efi and /mnt/twice): unmount the second",
    "held-by-an-array": "the live ESP /dev/vda1 is held by md",
    "not-root": "adopt changes disks and must run as root: run it with sudo",
}


def _assert_refused(stdout: str) -> None:
    """Each bad input of ci/interrupt.py's ADOPT_REFUSALS: exit 2, one line naming it, nothing changed."""
    cases = dict(re.findall(r"^@@@ refusal (\S+)\n(.*?)(?=^@@@ |\Z)", stdout, re.MULTILINE | re.DOTALL))
    assert sorted(cases) == sorted(REFUSED), stdout
    for name, text in cases.items():
        lines = text.strip().splitlines()
        assert lines[0] == "exit 2 lines 1", (name, text)
        assert lines[1].startswith(f"esp-mirror: error: {REFUSED[name]}"), (name, text)
        assert lines[2] == "unchanged", (name, text)  # (the real adopt's output follows the last case)


def test_adopt_cut_after_the_copy_then_during_the_final_recovery_still_ends_right(
    vm_assets: Assets, payload_efi: Path, tmp_path: Path, request
):
    """ci/adoptable.py's machine (a live ESP and a stale copy on two disks, partitions 2 an md
    RAID1 root, the target on a third disk): first each bad input is refused with nothing changed;
    then the power is cut once right after the degraded array holds the verified copy and once
    1 s into the recovery onto the live ESP's partition; each boot assembles, checks and mounts
    what the target's files say, as a system starting up does, and runs the same adopt, which
    ends with the live ESP's files on every member and every byte outside the ESP partitions as
    it was. Then the firmware boots each disk alone."""
    disks = [blank_disk(tmp_path / f"disk-{n}.img", 80) for n in "ab"]
    disks += [blank_disk(tmp_path / "target.img", 64), blank_disk(tmp_path / "disk-d.img", 32)]
    nvram = fresh_vars(tmp_path / "vars.fd", vm_assets)
    efi = str(payload_efi)  # what the mirror boots: the payload reports the disk it started from
    cut_file = f"{GUEST_WORK_DIR}/cut"
    started = time.monotonic()
    for boot in (1, 2):
        guest = run_in_guest(
            interrupt.adopt_power_cut_script(efi, boot, cut_file), disks, nvram, timeout=600, assets=vm_assets,
            power_cut=True,
        )  # fmt: skip
        cut = guest.serial_log.parent / "share" / "cut"
        assert cut.exists(), f"adopt ended before the power cut at boot {boot}:\n{guest.stdout}{guest.stderr}"
        assert f"POWER-CUT at boot {boot}" in cut.read_text()
        if boot == 1:
            _assert_refused(guest.stdout)
        if boot == 1:  # the degraded array holds the copy: vdb1 alone, the live ESP's slot empty
            assert re.search(r"md\d+ : active raid1 vdb1\[1\]\n.*\[2/1\] \[_U\]", cut.read_text()), cut.read_text()
            assert "] umount /run/esp-mirror/adopt" in guest.stdout and "] mdadm /dev/md/esp --add" not in guest.stdout
        else:  # md was copying the array onto the live ESP's partition
            assert re.search(r"recovery\s*=\s*[0-9.]+%", cut.read_text()), cut.read_text()
    guest = run_in_guest(
        interrupt.adopt_power_cut_script(efi, 3, cut_file), disks, nvram, timeout=600, assets=vm_assets
    )
    measurements(request.config).record(
        "interrupted", "adopt: power cut twice, then adopt to the end", time.monotonic() - started
    )
    assert guest.rc == 0, guest.stdout + guest.stderr
    assert "esp-mirror adopt: done in" in guest.stdout, guest.stdout
    assert json.loads(guest.stdout.splitlines()[-1]) == {"wrong": []}, guest.stdout
    # the firmware boots each disk alone through its entry, from the ESP partition of that disk
    for disk in disks[:2]:
        boot = boot_firmware([disk], shutil.copyfile(nvram, tmp_path / f"alone-{disk.stem}.fd"), assets=vm_assets,
                             log_dir=tmp_path)  # fmt: skip
        assert boot.loader_device_partuuid == partition_uuid(disk, 1), (disk, boot)
        assert boot.boot_entry_partuuid == partition_uuid(disk, 1), (disk, boot)
        assert "(esp-mirror " in (boot.boot_entry_description or ""), (disk, boot)
