"""Killed at any step, the same command run again ends right: apply, replace and repair.

One guest with three blank disks runs ``ci/interrupt.py`` (see there): for every step of each
command, the whole process group is killed with SIGKILL 0.3 s after the step started, the same
command runs again, and the mirror is checked. The counts go to the measured-times table.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from ci.measure import measurements
from ci.vm import Assets, blank_disk, fresh_vars, run_in_guest
from ci.vm.scripts import REPO_ROOT

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def interruptions(vm_assets: Assets, payload_efi: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    work = tmp_path_factory.mktemp("interrupted")
    disks = [blank_disk(work / f"disk-{n}.img", 256) for n in "abc"]
    nvram = fresh_vars(work / "vars.fd", vm_assets)
    script = f"cd {shlex.quote(str(REPO_ROOT))}\nexec {shlex.quote(sys.executable)} -m ci.interrupt {payload_efi}\n"
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
