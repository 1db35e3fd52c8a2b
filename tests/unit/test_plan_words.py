"""The plan never contradicts itself: its words (the notes and each step's why) follow the facts.

Two pairs have been seen in one plan: "no NVRAM boot entries" beside "the NVRAM entries are made
per disk below" (GRUB's payload), and "esp-mirror is not put on the installed system" beside
"run `esp-mirror refresh` there". Every golden plan, and the plan of every profile and
bootloader kind with and without NVRAM, with and without esp-mirror on the installed system (a
target without python3, and without debconf yet), is read for such a pair.
"""

from __future__ import annotations

import re

import pytest
from conftest import BOOTLOADERS, DATA, PROFILES, Machine, equip_two_disks, make_efi_image

from esp_mirror_plugin.pipeline.bootloaders import BootloaderKind, spec

GOLDEN = sorted((DATA / "golden").glob("plan-*.txt"))

# (what the plan says of a fact, a pattern of words that say the opposite)
CONTRADICTIONS = [
    ("no NVRAM boot entries", re.compile(r"entries are (?:made|ours)")),
    (
        "esp-mirror is not put on the installed system",
        re.compile(r"`esp-mirror (?!apply\b|plan\b|adopt\b)[a-z]+"),  # an upkeep command run there
    ),
]


def words(plan: str) -> list[str]:
    """The plan's own words: its comment lines (header, notes, each step's why), not the
    contents of the files it writes (``    | ...``)."""
    return [line for line in plan.splitlines() if line.startswith("#")]


def contradictions(plan: str) -> list[tuple[str, str]]:
    """(the fact as the plan says it, a line that says the opposite) for each pair found."""
    lines = words(plan)
    found = []
    for fact, opposite in CONTRADICTIONS:
        if any(fact in line for line in lines):
            found += [(fact, line) for line in lines if opposite.search(line)]
    return found


def test_the_check_finds_the_pairs_that_were_seen():
    seen = (
        "# note: no NVRAM boot entries (--no-nvram or no EFI variables): the firmware boots each disk through "
        "\\EFI\\BOOT\\BOOTX64.EFI\n"
        "# GRUB on the array (\\EFI\\debian\\ and \\EFI\\BOOT\\BOOTX64.EFI); the NVRAM entries are made per disk "
        "below\n"
        "# systemd-boot (and its own \\EFI\\BOOT copy) onto the array; entries are ours\n"
        "# note: the target has no python3: esp-mirror is not put on the installed system, so nothing heals\n"
        "# note: debconf is not in the target yet: ... run `esp-mirror refresh` there (or `debconf-set-selections "
        "/etc/esp-mirror/debconf.preseed`)\n"
        "    | file content that names `esp-mirror status` is not the plan's word\n"
    )
    assert [fact for fact, _ in contradictions(seen)] == [
        "no NVRAM boot entries",
        "no NVRAM boot entries",
        "esp-mirror is not put on the installed system",
    ]
    assert contradictions("# the NVRAM entries are made per disk below\n# run `esp-mirror refresh` there\n") == []


@pytest.mark.parametrize("golden", GOLDEN, ids=lambda p: p.name)
def test_no_golden_plan_contradicts_itself(golden):
    assert contradictions(golden.read_text()) == []


@pytest.mark.parametrize("there", [True, False], ids=["esp-mirror-there", "esp-mirror-not-there"])
@pytest.mark.parametrize("nvram", [True, False], ids=["nvram", "no-nvram"])
@pytest.mark.parametrize("kind", BOOTLOADERS)
@pytest.mark.parametrize("profile", PROFILES)
def test_no_plan_contradicts_itself(tmp_path, profile, kind, nvram, there):
    machine = equip_two_disks(Machine(tmp_path))
    if not there:  # no python3 (esp-mirror is not put there), and no debconf yet: an image root
        (machine.target / "usr/bin/python3").unlink()
        (machine.target / "usr/sbin/debconf-set-selections").unlink()
    image = ["--efi-image", str(make_efi_image(machine.root))] if spec(BootloaderKind(kind)).needs_image else []
    argv = ["--profile", profile, "--bootloader", kind, *image, *([] if nvram else ["--no-nvram"])]
    outcome = machine.cli("plan", *machine.args(), *argv)
    if outcome.code == 2 and not there:  # a profile whose own weekly check needs esp-mirror there refuses
        assert "weekly check runs esp-mirror there" in outcome.err
        return
    assert outcome.code == 0, outcome.err
    said = "\n".join(words(outcome.out))
    assert ("no NVRAM boot entries" in said) is not nvram
    assert ("esp-mirror is not put on the installed system" in said) is not there
    assert contradictions(outcome.out) == []
