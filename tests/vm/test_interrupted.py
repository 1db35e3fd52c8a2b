"""Killed at any step, the same command run again ends right: apply, replace and repair.

Two guests at once run ``ci/interrupt.py`` (see there), half of the work each: for every step of
each command, the whole process group is killed with SIGKILL 0.3 s after the step started, the same
command runs again, and the mirror is checked. The counts go to the measured-times table.
Then the power is cut (no sync) during mkfs and during the resync, and the same apply ends right.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ci import interrupt
from ci.measure import measurements
from ci.vm import Assets, blank_disk, fresh_vars, run_in_guest
from ci.vm.initrd import GUEST_WORK_DIR
from ci.vm.scripts import REPO_ROOT
from esp_mirror_plugin.system import zipapp

pytestmark = pytest.mark.vm


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
        driver = shlex.join([sys.executable, "-m", "ci.interrupt", str(efi), str(number), str(cli)])
        script = f"cd {shlex.quote(str(REPO_ROOT))}\nexec {driver}\n"
        guest = run_in_guest(script, disks, nvram, timeout=3600, assets=vm_assets, log_dir=work)
        assert guest.rc == 0, guest.stdout + guest.stderr
        return [json.loads(line) for line in guest.stdout.splitlines() if line.startswith("{")]

    with ThreadPoolExecutor(2) as pool:
        return [r for results in pool.map(half, (1, 2)) for r in results]


@pytest.mark.killloop
def test_every_interrupted_apply_replace_and_repair_converges_when_run_again(interruptions, request):
    results = [r for r in interruptions if "command" in r]
    for name in ("apply", "replace", "repair"):
        mine = [r for r in results if r["command"] == name]
        converged = sum(1 for r in mine if r["converged"])
        measurements(request.config).record(
            "interrupted",
            f"{name}: {converged} of {len(mine)} interruptions converged",
            sum(r["seconds"] for r in mine),
            "kill at each step, run again, check",
        )
    steps = {
        name: sorted(r["step"] for r in results if r["command"] == name) for name in ("apply", "replace", "repair")
    }
    assert all(numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 8 for numbers in steps.values()), steps
    assert [r for r in results if not r["converged"]] == []
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
