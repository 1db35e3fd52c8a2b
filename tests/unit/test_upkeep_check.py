"""`esp-mirror check`: md's consistency check, then the members' files compared (read-only)."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from conftest import ESP_FILES, FAT_MTIME, fast_applier, upkeep_changes

FW_FILE, FW_TEXT = "EFI/FW.TXT", b"written by the firmware, behind the back of md\n"


@pytest.fixture
def checked(mirror, monkeypatch):
    mirror.accept_changes()
    fast_applier(mirror, monkeypatch)
    return mirror


def test_check_of_a_healthy_mirror_runs_only_the_md_check_and_exits_0(checked):
    outcome = checked.cli("check")

    assert (outcome.code, outcome.err) == (0, "")
    assert upkeep_changes(outcome.calls) == [("sync",), ("mdadm", "--misc", "--action=check", "/dev/md/esp")]
    lines = outcome.out.splitlines()
    # the fake md finishes the check at once: the wait then finds nothing to wait for ("unchanged")
    assert [line for line in lines if not re.fullmatch(r"  \[check\]   (done|unchanged) \(.*", line)] == [
        "  [check] sync",
        "  [check] mdadm --misc --action=check /dev/md/esp",
        "  [check] wait for /dev/md/esp to finish its check (progress shown)",
        lines[-2],
        "member files: identical",
    ]
    assert re.fullmatch(r"md check of /dev/md/esp: mismatch_cnt 0 \(\d+\.\d s\)", lines[-2])


def test_check_finds_a_file_written_to_one_member_and_exits_1(checked):
    checked.members["/dev/vdb1"][FW_FILE] = FW_TEXT
    checked.set_md(mismatch_cnt=8)

    outcome = checked.cli("check", "--json")

    assert outcome.code == 1
    report = json.loads(outcome.out)
    assert isinstance(report.pop("seconds"), float)
    assert report == {
        "mismatch_cnt": 8,
        "members": ["/dev/vda1", "/dev/vdb1"],
        "differences": [
            {
                "path": FW_FILE,
                "members": {
                    "/dev/vda1": None,
                    "/dev/vdb1": {
                        "size": len(FW_TEXT),
                        "mtime": FAT_MTIME,
                        "sha256": hashlib.sha256(FW_TEXT).hexdigest(),
                    },
                },
            }
        ],
    }
    assert list((checked.root / "run/esp-mirror").iterdir()) == []  # the copies are removed


def test_mismatched_sectors_alone_fail_the_check(checked):
    checked.set_md(mismatch_cnt=128)
    outcome = checked.cli("check")
    assert outcome.code == 1
    assert outcome.out.splitlines()[-1] == "member files: identical"


def test_an_empty_member_fat_differs_in_every_file(checked):
    checked.members["/dev/vdb1"] = {}

    report = json.loads(checked.cli("check", "--json").out)

    assert [(d["path"], d["members"]["/dev/vdb1"]) for d in report["differences"]] == [
        (path, None) for path in sorted(ESP_FILES)
    ]


def test_check_reads_only_usable_members(checked):
    checked.set_member("/dev/vdb1", "faulty", 1)
    checked.set_md(degraded=1)

    outcome = checked.cli("check", "--json")

    assert json.loads(outcome.out)["members"] == ["/dev/vda1"]
    assert not any("/dev/vdb1" in c for c in outcome.calls if c[0] in ("mdir", "mcopy"))
