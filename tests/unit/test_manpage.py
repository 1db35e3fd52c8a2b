"""esp-mirror(8): generated from the parser (ci/manpage), shipped in the package and the zip
application, installed by apply next to esp-mirror and written again by refresh.

The rendering test runs man(1) (man-db, groff-base: ci/bootstrap installs them); the drift test
regenerates the page with argparse-manpage (the test extra) and compares it with the shipped one.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import Mirror, fast_applier

from ci import manpage
from esp_mirror_plugin import cli, man
from esp_mirror_plugin.hooks import heal, installed
from esp_mirror_plugin.system import zipapp

SHIPPED = Path(man.__file__).parent / man.FILE
TOP = "(top)"  # the options before the command


def options_by_command() -> dict[str, list[str]]:
    """Every option string (and positional) of the parser, by command; --help is left out, as
    argparse-manpage leaves it out (every command has it)."""

    def listed(parser: argparse.ArgumentParser) -> list[str]:
        found = []
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            found += list(action.option_strings) or [action.metavar or action.dest]
        return found

    parser = cli._parser([])
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {TOP: listed(parser)} | {name: listed(sub) for name, sub in commands.choices.items()}


def rendered() -> str:
    """`man -l` of the shipped page as a reader sees it at 80 columns, warnings an error."""
    if shutil.which("man") is None or shutil.which("groff") is None:
        pytest.fail("man or groff is missing: install man-db and groff-base (ci/bootstrap does)", pytrace=False)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MANWIDTH": "80", "LANG": "C.UTF-8", "MANPAGER": "cat"}
    done = subprocess.run(
        ["man", "--warnings", "-l", str(SHIPPED)], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    text = re.sub(r".\x08", "", done.stdout)  # col -b: no overstrike bold or underline
    return text.replace("\u2010", "-").replace("\u2212", "-")  # groff's hyphen and minus, as typed


def sections(text: str) -> dict[str, str]:
    """The page's sections (NAME, SYNOPSIS, ...) and, for each command, its subsection of COMMANDS."""
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        command = re.fullmatch(r"   esp-mirror (\S+)", line)
        if re.fullmatch(r"[A-Z][A-Z ]+", line) or command:
            current = found.setdefault(command.group(1) if command else line, [])
        else:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in found.items()}


def tags(section: str) -> set[str]:
    """The first words of the section's lines: the terms of its tagged paragraphs."""
    return {line.split()[0] for line in section.splitlines() if line.strip()}


@pytest.mark.real_processes
def test_the_page_renders_and_lists_every_command_and_each_of_its_options():
    text = rendered()
    assert text.split(maxsplit=1)[0] == "ESP-MIRROR(8)"
    page = sections(text)
    for command, options in options_by_command().items():
        if command == TOP:
            assert set(options) <= tags(page["OPTIONS"]), (options, page["OPTIONS"])
        else:
            assert command in page, f"esp-mirror {command} is not in the page"
            assert set(options) <= tags(page[command]), (command, set(options) - tags(page[command]))
    assert list(page)[:3] == ["NAME", "SYNOPSIS", "DESCRIPTION"]
    assert {"EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES", "SEE ALSO"} <= set(page)
    assert {"0", "1", "2", "130"} <= tags(page["EXIT STATUS"])
    assert {heal.PROGRAM, installed.MANUAL, "/etc/fstab"} <= tags(page["FILES"])
    assert "COMMENTS" not in page  # the epilog's blocks are sections of their own


def test_the_shipped_page_is_what_the_generator_makes_from_the_current_parser():
    text = SHIPPED.read_text()
    date = manpage.date_of(text)
    assert date is not None, f"{SHIPPED} has no date in its .TH line: run {manpage.REGENERATE}"
    expected = manpage.render(date)
    if expected != text:
        diff = difflib.unified_diff(text.splitlines(), expected.splitlines(), "shipped", "generated", lineterm="", n=1)
        pytest.fail(
            f"{SHIPPED} is not what the parser makes now: run `{manpage.REGENERATE}` and commit the page\n"
            + "\n".join(list(diff)[:40]),
            pytrace=False,
        )


def test_a_changed_help_text_is_drift(monkeypatch):
    """The drift test can fail: the shipped page stops being current once a help text changes."""
    text = SHIPPED.read_text()
    assert manpage.current(text)
    monkeypatch.setitem(cli._COMMANDS, "status", "a help text the page does not have")
    assert not manpage.current(text)


def test_the_date_is_kept_while_the_page_is_the_same(tmp_path, monkeypatch):
    page = tmp_path / man.FILE
    page.write_text(manpage.render("2020-01-02"))
    monkeypatch.setattr(manpage, "shipped", lambda: page)
    assert manpage.main(["--check"]) == 0 and manpage.main([]) == 0
    assert manpage.date_of(page.read_text()) == "2020-01-02"
    page.write_text(page.read_text().replace("EXIT STATUS", "EXIT CODES"))
    assert manpage.main(["--check"]) == 1
    assert manpage.main([]) == 0 and manpage.current(page.read_text())
    assert manpage.date_of(page.read_text()) != "2020-01-02"


def test_the_epilog_blocks_become_terms_with_their_text():
    epilog = (
        "examples:\n  esp-mirror status\n      the health\n\nexit codes:\n  0    done\n  1    a step\n       failed"
    )
    assert manpage.epilog_blocks(epilog) == {
        "examples": [("esp-mirror status", "the health")],
        "exit codes": [("0", "done"), ("1", "a step failed")],
    }
    assert manpage.epilog_blocks("") == {}


@pytest.mark.parametrize(
    ("epilog", "named"),
    [
        ("see:\n  https://example.org", r"\['see'\] have no section"),
        ("examples:\n esp-mirror status", "is neither an item"),
        ("  esp-mirror status", "does not start with a 'heading:' line"),
    ],
)
def test_an_epilog_the_page_cannot_place_stops_the_generator(monkeypatch, epilog, named):
    real = cli._parser

    def parser(argv: list[str]) -> argparse.ArgumentParser:
        built = real(argv)
        built.epilog = epilog
        return built

    monkeypatch.setattr(cli, "_parser", parser)
    with pytest.raises(manpage.EpilogError, match=named):
        manpage.render("2020-01-02")


# -- shipped and installed ---------------------------------------------------------------------


def test_the_package_gives_the_page_it_ships():
    assert man.page() == SHIPPED.read_bytes() and man.page().startswith(b'.TH ESP\\-MIRROR "8"')


@pytest.mark.real_processes
def test_the_zip_application_carries_the_page_and_reads_it_from_inside(tmp_path):
    app = tmp_path / "esp-mirror"
    app.write_bytes(zipapp.build().data)
    assert zipfile.ZipFile(app).read(f"esp_mirror_plugin/man/{man.FILE}") == SHIPPED.read_bytes()
    inner = (
        "import hashlib; from esp_mirror_plugin import man; print(man.__file__, hashlib.sha256(man.page()).hexdigest())"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {str(app)!r}); {inner}"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        cwd=tmp_path,
    )
    where, digest = done.stdout.split()
    assert where.startswith(f"{app}/") and digest == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()


def test_apply_installs_the_page_beside_esp_mirror_and_a_second_apply_leaves_it(images):
    plan = json.loads(images.cli("plan", "--json", *images.args()).out)
    [group] = [g for g in plan["groups"] if g["name"] == installed.GROUP]
    step = next(s for s in group["steps"] if s["path"] == f"{images.target}{installed.MANUAL}")
    assert (step["kind"], step["mode"], step["sha256"]) == (
        "install-program",
        "0644",
        hashlib.sha256(SHIPPED.read_bytes()).hexdigest(),
    )
    assert step["summary"].startswith("the manual page esp-mirror(8) (esp-mirror ")
    assert step["would_change"] is True

    assert images.cli("apply", "--yes", *images.args()).code == 0
    page = images.target / installed.MANUAL.lstrip("/")
    assert page.read_bytes() == SHIPPED.read_bytes() and stat.S_IMODE(page.stat().st_mode) == 0o644
    again = json.loads(images.cli("plan", "--json", *images.args()).out)
    [group] = [g for g in again["groups"] if g["name"] == installed.GROUP]
    assert next(s for s in group["steps"] if s["path"] == str(page))["would_change"] is False


def test_a_missing_page_is_a_status_problem_that_refresh_writes_again(mirror: Mirror, monkeypatch):
    page = mirror.sysroot / installed.MANUAL.lstrip("/")
    assert page.read_bytes() == SHIPPED.read_bytes()  # the installed system as apply left it
    page.unlink()

    status = mirror.cli("status", "--json")
    assert status.code == 1
    assert json.loads(status.out)["problems"] == [
        f"{page} differ from what esp-mirror writes (a package replaced them, or something was installed "
        "later): run `esp-mirror refresh`"
    ]
    mirror.accept_changes()
    fast_applier(mirror, monkeypatch)
    assert mirror.cli("refresh", "--yes").code == 0
    assert page.read_bytes() == SHIPPED.read_bytes()
    assert mirror.cli("status").code == 0
