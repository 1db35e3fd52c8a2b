"""One meaning per exit code, and main() returns each for what it means: 0 done or healthy, 1
problems found or a step failed, 2 bad input, 70 an internal error (EX_SOFTWARE of sysexits.h:
a bug, never a problem of the machine), 130 interrupted. --help says them as errors.MEANINGS has
them (the manual page is made from --help, README's table is held to them in test_docs.py)."""

from __future__ import annotations

import re

import pytest
from conftest import Machine, Mirror

from esp_mirror_plugin import cli
from esp_mirror_plugin.cli import install as cli_install
from esp_mirror_plugin.errors import MEANINGS, BadInput, ExitCode, StepFailed


def test_each_exit_code_has_one_meaning_and_the_help_says_it_in_those_words():
    assert [int(code) for code in ExitCode] == [0, 1, 2, 70, 130]
    assert list(MEANINGS) == list(ExitCode)
    block = cli.EPILOG.split("exit codes:\n", 1)[1]
    said = dict(re.findall(r"^  (\d+) +(.*(?:\n {7}\S.*)*)", block, re.MULTILINE))
    assert {int(code): " ".join(text.split()) for code, text in said.items()} == {
        int(code): meaning for code, meaning in MEANINGS.items()
    }
    assert (BadInput.exit_code, StepFailed.exit_code) == (ExitCode.BAD_INPUT, ExitCode.PROBLEMS)


def test_0_done(two_disks: Machine):
    outcome = two_disks.cli("plan", *two_disks.args())
    assert (outcome.code, outcome.err) == (0, "")


def test_0_a_healthy_mirror(mirror: Mirror):
    assert mirror.cli("status").code == 0


def test_1_problems_found(mirror: Mirror):
    mirror.lose_disk("vdb")
    outcome = mirror.cli("status")
    assert outcome.code == 1 and "problems:\n" in outcome.out


def test_1_a_step_failed(images: Machine):
    images.fail(("mdadm", "--create"), 1, "mdadm: cannot open /dev/loop1p1: Device or resource busy\n")
    outcome = images.cli("apply", "--yes", *images.args())
    assert outcome.code == 1
    assert "step failed: mdadm --create" in outcome.err and "run the same `esp-mirror apply` again" in outcome.err


def test_2_bad_input(two_disks: Machine):
    outcome = two_disks.cli("plan", "--disk")
    assert outcome.code == 2
    assert outcome.error == "argument --disk: expected one argument (see `esp-mirror plan --help`)"


def test_70_an_internal_error_is_one_line_that_says_it_is_a_bug(two_disks: Machine, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("a line\nand another")

    monkeypatch.setattr(cli_install, "prepare", broken)
    outcome = two_disks.cli("plan", *two_disks.args())
    assert outcome.code == ExitCode.INTERNAL_ERROR == 70
    assert outcome.err == (
        "esp-mirror: internal error: ValueError: a line and another (this is a bug; run again with --debug "
        "for the traceback and report it)\n"
    )
    debug = two_disks.cli("--debug", "plan", *two_disks.args())
    assert debug.code == 70 and debug.err.startswith("Traceback (most recent call last):\n")
    assert debug.err.endswith(outcome.err)


@pytest.mark.parametrize("argv", [("status",), ("check",)])
def test_70_also_for_an_upkeep_command(mirror: Mirror, monkeypatch, argv):
    from esp_mirror_plugin.upkeep import commands

    def broken(*args, **kwargs):
        raise RuntimeError("unexpected")

    monkeypatch.setattr(commands, "mirror_of", broken)
    outcome = mirror.cli(*argv)
    assert outcome.code == 70 and "internal error: RuntimeError: unexpected (this is a bug" in outcome.err


def test_130_interrupted(two_disks: Machine, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_install, "prepare", interrupted)
    outcome = two_disks.cli("plan", *two_disks.args())
    assert outcome.code == ExitCode.INTERRUPTED == 130
    assert outcome.err.startswith("esp-mirror: interrupted. ")
