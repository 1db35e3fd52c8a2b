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
import shlex
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import BOOTLOADERS, PROFILES, Machine, Mirror, equip_two_disks, fast_applier, make_efi_image, plan_of

from ci import manpage
from esp_mirror_plugin import cli, man
from esp_mirror_plugin.cli import install as cli_install
from esp_mirror_plugin.errors import ExitCode
from esp_mirror_plugin.hooks import heal, installed, upgrades
from esp_mirror_plugin.pipeline import checks
from esp_mirror_plugin.pipeline.bootloaders import BootloaderKind, spec
from esp_mirror_plugin.pipeline.profiles import load_profile
from esp_mirror_plugin.system import zipapp
from esp_mirror_plugin.upkeep import commands as upkeep_commands
from esp_mirror_plugin.upkeep.table import UPKEEP

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
    assert {str(int(code)) for code in ExitCode} <= tags(page["EXIT STATUS"])
    assert {heal.PROGRAM, installed.MANUAL, "/etc/fstab"} <= tags(page["FILES"])
    assert "COMMENTS" not in page  # the epilog's blocks are sections of their own


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser([])
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.real_processes
def test_each_usage_renders_as_argparse_wraps_it_and_every_line_fits_80_columns():
    """No filling and no hyphenation: each usage line is argparse's line (a command's subsection
    is 7 columns in), never `{efi,zfsbootmenu,sys-` / `temd-boot,grub}` or a lone `[--wipe]`."""
    text = rendered()
    for name, sub in commands().items():
        lines = "\n".join(f"       {line}" for line in manpage.usage(sub).splitlines())
        assert f"\n{lines}\n" in text, f"esp-mirror {name}'s usage is not rendered as argparse wraps it"
    top = manpage.usage(cli._parser([]))
    assert f"SYNOPSIS\n       {top}\n" in text
    assert [line for line in text.splitlines() if len(line) > 80] == []
    assert not re.search(r"\w-\n", text)  # nothing is hyphenated at a line's end


@pytest.mark.real_processes
def test_each_command_says_its_description_once():
    page = sections(rendered())
    for name, help_text in cli._COMMANDS.items():
        flat = " ".join(page[name].split())
        assert flat.count(" ".join(help_text.split())) == 1, name


def test_the_page_lists_exactly_the_options_of_each_command():
    """The page's options (its roff source, command by command) are the parser's, no more, no less."""
    source = SHIPPED.read_text()
    listed: dict[str, set[str]] = {}
    where = TOP
    for line_number, line in enumerate(source.splitlines()):
        heading = re.fullmatch(r"\.SS \\fBesp\\-mirror (\S+)\\fR", line)
        if heading:
            where = heading.group(1)
        elif line.startswith(".SH") and where != TOP:
            where = "(after the commands)"
        if line == ".TP" and where not in ("(after the commands)",):
            term = source.splitlines()[line_number + 1]
            found = re.match(r"\\fB(.+?)\\fR", term)
            if found:
                listed.setdefault(where, set()).add(found.group(1).replace("\\-", "-"))
    expected = {name: set(options) for name, options in options_by_command().items()}
    assert listed == {name: options for name, options in expected.items() if options}


def examples() -> list[str]:
    """The EXAMPLES section's command lines, as the page's source has them."""
    source = SHIPPED.read_text().split(".SH EXAMPLES\n", 1)[1].split("\n.SH ", 1)[0]
    return [m.replace("\\-", "-") for m in re.findall(r"^\.B (.*)$", source, re.MULTILINE)]


def test_every_example_in_the_page_is_a_command_line_that_works():
    """Each example parses, and is not bad input where that can be told without a machine: plan
    and apply get 2 to 8 disks (checks.check_count), adopt the live ESP's disk and another."""
    found = examples()
    assert len(found) >= 8 and {shlex.split(e)[1 if e.startswith("sudo ") else 0] for e in found} == {"esp-mirror"}
    for example in found:
        words = shlex.split(example)
        argv = words[2:] if words[0] == "sudo" else words[1:]
        args = cli._parser(argv).parse_args(argv)
        if args.command in ("plan", "apply"):
            checks.check_count(cli_install.request_from_args(args))  # type: ignore[arg-type]  # reads the disks
        if args.command == "adopt":
            disks = cli_install.request_from_args(args).disks
            assert len(disks) >= 2, f"{example}: adopt needs the live ESP's disk and at least one more"
        if args.command in UPKEEP or args.command in ("apply", "adopt"):
            assert words[0] == "sudo", f"{example}: {args.command} runs as root"


def test_the_example_check_fails_an_adopt_of_one_disk(monkeypatch):
    """The check above can fail: the page's old adopt example (one disk) is caught."""
    monkeypatch.setattr(manpage, "MORE_EXAMPLES", [("sudo esp-mirror adopt --dry-run --disk /dev/sdb", "x")])
    monkeypatch.setattr(sys.modules[__name__], "examples", lambda: [e for e, _ in manpage.MORE_EXAMPLES] * 8)
    with pytest.raises(AssertionError, match="adopt needs"):
        test_every_example_in_the_page_is_a_command_line_that_works()


def files_section() -> str:
    source = SHIPPED.read_text().split(".SH FILES\n", 1)[1].split("\n.SH ", 1)[0]
    return source.replace("\\-", "-")


@pytest.mark.parametrize("profile", PROFILES)
def test_files_names_every_file_a_plan_writes_outside_the_esp(tmp_path, profile):
    """FILES is complete: every file apply writes in the target, for every bootloader kind of the
    profile, is named there (the ESP's own files are the bootloader's)."""
    files = files_section()
    missing = set()
    for kind in BOOTLOADERS:
        machine = equip_two_disks(Machine(tmp_path / kind))
        image = make_efi_image(machine.root)
        extra = ["--efi-image", str(image)] if spec(BootloaderKind(kind)).needs_image else []
        plan = plan_of(machine, "--profile", profile, "--bootloader", kind, *extra)
        esp = plan["request"]["mountpoint"]
        for group in plan["groups"]:
            for step in group["steps"]:
                if step["kind"] not in ("write-file", "edit-block", "install-program"):
                    continue
                path = "/" + os.path.relpath(step["path"], machine.target)
                directory, name = path.rsplit("/", 1)
                named = path in files or (f"{directory}/" in files and name in files)  # a directory's file
                if not path.startswith(f"{esp}/") and not named:
                    missing.add(path)
    assert missing == set()


def test_files_says_what_each_of_esp_mirrors_own_files_holds():
    files = files_section()
    assert "/run/lock/esp-mirror.lock" in files and upkeep_commands.WORK_DIR in files  # lock.PATH, unpatched
    preseed = files.split(f".B {upgrades.PRESEED}\n", 1)[1].split("\n.TP", 1)[0]
    assert "debconf" in preseed and upgrades.RELAX not in preseed and "fwupd" not in preseed
    # what the preseed file holds: debconf answers and comments, nothing else
    lines = upgrades.debconf_lines(load_profile("debian"), "0:0:0:0").splitlines()
    assert all(line.startswith("#") or line.split()[0] in ("grub-efi-amd64", "shim-signed") for line in lines)


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
