"""Killed at any step, the same command run again ends right: apply, replace and repair.

One guest with three blank disks runs ``ci/interrupt.py`` (see there): for every step of each
command, the whole process group is killed with SIGKILL 0.3 s after the step started, the same
command runs again, and the mirror is checked. The counts go to the measured-times table.
Then the power is cut (no sync) during mkfs and during the resync, and the same apply ends right.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import pytest

from ci import interrupt
from ci.measure import measurements
from ci.vm import Assets, blank_disk, fresh_vars, run_in_guest
from ci.vm.initrd import GUEST_WORK_DIR
from ci.vm.scripts import REPO_ROOT

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def interruptions(vm_assets: Assets, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    work = tmp_path_factory.mktemp("interrupted")
    disks = [blank_disk(work / f"disk-{n}.img", 256) for n in "abc"]
    nvram = fresh_vars(work / "vars.fd", vm_assets)
    # what apply installs is only copied here, never booted: a small EFI binary keeps the copies short
    efi = vm_assets.efi_stub
    script = f"cd {shlex.quote(str(REPO_ROOT))}\nexec {shlex.quote(sys.executable)} -m ci.interrupt {efi}\n"
    guest = run_in_guest(script, disks, nvram, timeout=2400, assets=vm_assets)
    assert guest.rc == 0, guest.stdout + guest.stderr
    return [json.loads(line) for line in guest.stdout.splitlines() if line.startswith("{")]


def test_every_interrupted_apply_replace_and_repair_converges_when_run_again(interruptions, request):
    results = [r for r in interruptions if "command" in r]
    [summary] = [r["summary"] for r in interruptions if "summary" in r]
    for name, (converged, total) in summary.items():
        seconds = sum(r["seconds"] for r in results if r["command"] == name)
        measurements(request.config).record(
            "interrupted", f"{name}: {converged} of {total} interruptions converged", seconds, "kill, run again, check"
        )
    assert all(total >= 5 for _, total in summary.values()), summary  # one run per step of the plan
    failed = [r for r in results if not r["converged"]]
    assert failed == []
    # every step was really interrupted: the kill came while the step ran, not after the command ended
    assert [r["step"] for r in results if r["killed_in"] is None] == []


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
    assert "resync" in cuts["resync"]  # /proc/mdstat at the cut: the resync was running

    apply = shlex.join(interrupt.apply_argv(str(vm_assets.efi_stub)))
    check = f"{shlex.quote(sys.executable)} -m ci.interrupt check {vm_assets.efi_stub} /dev/vda /dev/vdb"
    script = f"set -eu\ncd {shlex.quote(str(REPO_ROOT))}\n{apply} 2>&1\n{check}\n"
    started = time.monotonic()
    guest = run_in_guest(script, disks, nvram, timeout=600, assets=vm_assets)
    measurements(request.config).record(
        "interrupted", "power cut twice, then apply to the end", time.monotonic() - started
    )

    assert guest.rc == 0, guest.stdout + guest.stderr
    assert json.loads(guest.stdout.splitlines()[-1]) == {"wrong": []}, guest.stdout
