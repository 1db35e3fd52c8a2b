"""The ESP beside other partitions, with the real tools in a guest (ci/shared_disks.py, issue 25):
partition 1 is added beside a ZFS pool's partition and beside an md data array, whose every byte
and GPT entry stay as they were; five refusals leave every byte of the disks as it was."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ci import shared_disks
from ci.vm import Assets

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def shared(vm_assets: Assets, payload_efi: Path, module_dir: Path) -> shared_disks.SharedDisks:
    result = shared_disks.run(module_dir, payload_efi, assets=vm_assets)
    assert result.guest.rc == 0, result.guest.stderr[-3000:]
    return result


@pytest.mark.parametrize("disk", ["vda", "vdc"], ids=["zfs-pool-stand-in", "md-data-array"])
def test_partition_1_is_added_and_every_byte_of_partition_2_stays_as_it_was(
    shared: shared_disks.SharedDisks, disk: str
) -> None:
    s = shared.sections
    assert s[f"apply {disk}"].rstrip().endswith("exit 0"), s[f"apply {disk}"][-3000:]
    assert s[f"before {disk}"] == s[f"after {disk}"]  # the sha256 and the GPT entry of both partitions 2
    assert len(re.findall(r"^[0-9a-f]{64}$", s[f"before {disk}"], re.MULTILINE)) == 2
    table = s[f"table {disk}"]
    assert re.search(r"^\s+1\s+2048\s+133119\s+64\.0 MiB\s+EF00\s+esp-mirror$", table, re.MULTILINE), table
    # the plan said what it left alone
    assert re.search(r"left exactly as they are: \w+2 \(", s[f"apply {disk}"]), s[f"apply {disk}"]


WORDS = {
    "sizes": "the ESP partitions differ (",
    "no-room": "has no ESP partition and no room for one of 64 MiB at 1 MiB (sectors 2048-133119 are vdc1's)",
    "files": "holds files, which apply never overwrites: take it into the mirror with its files with `esp-mirror",
    "wipe-mounted": "--wipe would erase all of /dev/vdc, and the running system uses vdc2 (",
    "images": "image files are not this machine's disks: pass --target ROOT, the image's root",
}


@pytest.mark.parametrize("case", shared_disks.REFUSALS)
def test_bad_input_is_one_line_exit_2_and_every_byte_as_it_was(shared: shared_disks.SharedDisks, case: str) -> None:
    lines = shared.sections[f"refuse {case}"].strip().splitlines()
    assert lines[-2:] == ["exit 2", "unchanged"], lines
    assert len(lines) == 3 and lines[0].startswith("esp-mirror: error: ") and WORDS[case] in lines[0], lines
