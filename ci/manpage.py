"""esp-mirror(8), generated from the command line's argparse parser by argparse-manpage.

The page is made at development time and shipped as package data (esp_mirror_plugin/man/): at run
time esp-mirror depends on pluggy, PyYAML and sh only, so apply installs the page it carries. The
SYNOPSIS, DESCRIPTION and every command with its options come from the parser
(``esp_mirror_plugin.cli._parser``); the sections the parser cannot say (exit status, environment,
files, examples, see also) are written below, once, with the paths taken from the modules that
write them. tests/unit/test_manpage.py regenerates the page and fails when the shipped one differs.

Regenerate (after changing an option, a help text or a section here)::

    ci/manpage            # writes esp_mirror_plugin/man/esp-mirror.8
    ci/manpage --check    # exit 1 when the shipped page is not what the parser makes now

The page's date (in its .TH line) is the day its text last changed: kept while the rest is the same.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
import tomllib
from pathlib import Path

from argparse_manpage.manpage import Manpage

from esp_mirror_plugin import __version__, cli
from esp_mirror_plugin.hooks import anycaller, heal, installed, periodic, upgrades
from esp_mirror_plugin.host import BLOCK_PLUGINS_ENV
from esp_mirror_plugin.man import FILE
from esp_mirror_plugin.pipeline import record
from esp_mirror_plugin.pipeline.profiles import builtin_names, load_profile
from esp_mirror_plugin.pipeline.request import METRICS_DIR
from esp_mirror_plugin.system import state
from esp_mirror_plugin.upkeep import metrics

ROOT = Path(__file__).resolve().parents[1]
REGENERATE = "ci/manpage"  # the one command that writes the page again
SECTION = 8
MANUAL = "System Manager's Manual"
_TH_DATE = re.compile(r'^\.TH \S+ "[^"]*" "([^"]*)"', re.MULTILINE)


def _roff(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped, no line starting a request."""
    escaped = text.replace("\\", "\\\\").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", escaped, flags=re.MULTILINE)


def _items(items: list[tuple[str, str]]) -> str:
    """A tagged list: each (term, text) a .TP paragraph, the term in bold."""
    return "\n".join(f".TP\n.B {_roff(term)}\n{_roff(text)}" for term, text in items)


def _root(path: str) -> str:
    return path if path.startswith("/") else f"/{path}"


ENVIRONMENT = _items(
    [(BLOCK_PLUGINS_ENV, "When set (e.g. to 1), no third-party plugins are loaded, only esp-mirror's own.")]
)


def _in_state(path: str) -> str:
    """A state file's name in the state directory."""
    return os.path.relpath(path, state.STATE_DIR)


def _mdadm_confs() -> str:
    paths = dict.fromkeys(load_profile(name).mdadm_conf for name in builtin_names())
    return " or ".join(sorted(paths))


FILES = _items(
    [
        (heal.PROGRAM, "esp-mirror on the installed system: one Python zip application, written by apply and refresh."),
        (installed.MANUAL, "This manual page, written with it."),
        (_root(record.PATH), "What apply set up, which the commands after install read."),
        (
            f"/{state.STATE_DIR}/",
            f"State: {_in_state(state.HISTORY)} (one line per heal, replace, add and repair), "
            f"{_in_state(state.LAST_CHECK)} (the last check's result), {_in_state(state.REPAIR_JOURNAL)}, "
            f"{_in_state(state.ADOPT_JOURNAL)} and {_in_state(state.RELEASE_JOURNAL)} (a repair, an adoption or a "
            "release not finished yet), "
            f"{_in_state(state.ADOPT_BACKUPS)}/ (adopt's backups), the files repair overwrites (its "
            f"--backup-dir), {_in_state(state.INITRAMFS_STAMP)} (what the initramfs was last rebuilt from).",
        ),
        (_mdadm_confs(), "The array's ARRAY line, in a block marked as esp-mirror's (the path is the profile's)."),
        ("/etc/fstab", "The mount of the array's FAT at the mount point, in a block marked as esp-mirror's."),
        (
            "/etc/systemd/system/esp-mirror-heal.service, esp-mirror-heal@.service, "
            "/etc/udev/rules.d/65-esp-mirror-heal.rules",
            "heal at boot and when a member's partition appears (systemd); elsewhere "
            "/etc/local.d/esp-mirror-heal.start (OpenRC) or a block in /etc/rc.local.",
        ),
        (
            f"/etc/systemd/system/{periodic.UNIT}.timer, {periodic.METRICS_UNIT}.timer",
            f"The weekly check and the refresh of the metrics ({metrics.FILE_NAME} in the node_exporter "
            f"textfile directory, by default {METRICS_DIR}); elsewhere cron or periodic scripts.",
        ),
        (
            upgrades.PRESEED,
            "Settings package upgrades read: the debconf answers of GRUB and shim (Debian, Ubuntu); "
            f"{upgrades.RELAX}=1 in /etc/environment and systemd's environment; the ESP's mount point "
            "for fwupd.",
        ),
        (
            anycaller.GUARD,
            "Stops kernel and bootloader hooks loudly when the mirror is not mounted; run from "
            f"{', '.join(anycaller.HOOK_DIRS)}, {anycaller.KERNEL_INSTALL_PLUGIN}, {anycaller.APT_HOOK} "
            f"and {anycaller.PACMAN_HOOK}, as each distribution has them. bootctl is wrapped "
            f"({anycaller.BOOTCTL}, its original kept as {anycaller.DIVERTED}, or {anycaller.LOCAL_BOOTCTL}).",
        ),
    ]
)

# Examples of the commands after install, beside the parser's own (its epilog's "examples:")
MORE_EXAMPLES = [
    ("esp-mirror adopt --dry-run --disk /dev/sdb", "how a running system's ESP would be taken into a mirror"),
    ("sudo esp-mirror check", "md's consistency check, then a comparison of the members' files"),
    ("sudo esp-mirror replace --old missing --new /dev/sdc", "a new disk in place of a failed one"),
    ("sudo esp-mirror repair --source auto", "every member made equal to the one the firmware booted from"),
    ("sudo esp-mirror refresh", "the installed system's files written again (after a package replaced one)"),
    ("sudo esp-mirror release --disk /dev/sdb", "a disk out of the mirror, as a plain ESP that boots alone"),
    ("sudo esp-mirror release --all", "the mirror undone: the first disk's ESP partition is the machine's ESP"),
]
# The parser's epilog ("examples:", "exit codes:" blocks, as --help shows them) becomes these sections.
EPILOG_SECTIONS = {"examples": "examples", "exit codes": "exit status"}
SEE_ALSO = r"\fBmdadm\fR(8), \fBmd\fR(4), \fBmdadm.conf\fR(5), \fBefibootmgr\fR(8), \fBfstab\fR(5), \fBbootctl\fR(1)"


def _summary() -> str:
    """The NAME line's text: pyproject.toml's description (the wheel's summary)."""
    text: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["description"]
    return text[0].lower() + text[1:]


class EpilogError(Exception):
    """The parser's epilog is not in the shape this generator reads; the message says what to change."""


def epilog_blocks(epilog: str) -> dict[str, list[tuple[str, str]]]:
    """The epilog's blocks as {heading: [(term, text)]}.

    A block is a "heading:" line and items indented by two spaces: "  TERM  TEXT" or "  TERM" with
    its text on the lines below, indented deeper (as --help shows examples and exit codes).
    """
    blocks: dict[str, list[tuple[str, str]]] = {}
    for chunk in filter(None, epilog.strip("\n").split("\n\n")):
        heading, *lines = chunk.splitlines()
        if not heading.endswith(":") or heading.startswith(" "):
            raise EpilogError(f"the epilog's block {heading!r} does not start with a 'heading:' line")
        items: list[list[str]] = []
        for line in lines:
            if re.match(r"^  \S", line):
                term, *text = re.split(r"\s{2,}", line.strip(), maxsplit=1)
                items.append([term, text[0] if text else ""])
            elif items and line.startswith("   "):
                items[-1][1] = f"{items[-1][1]} {line.strip()}".strip()
            else:
                raise EpilogError(f"the epilog's line {line!r} is neither an item (two spaces) nor its text")
        blocks[heading[:-1]] = [(term, text) for term, text in items]
    return blocks


def render(date: str) -> str:
    """The page for the current parser, dated ``date`` (YYYY-MM-DD).

    :raises EpilogError: the parser's epilog has a block the page has no section for, or another shape.
    """
    parser = cli._parser([])
    blocks = epilog_blocks(parser.epilog or "")
    unknown = sorted(set(blocks) - set(EPILOG_SECTIONS))
    if unknown:
        raise EpilogError(f"the epilog's {unknown} have no section in the page: add them to EPILOG_SECTIONS")
    parser.epilog = None  # its blocks are sections of their own, not one COMMENTS paragraph
    blocks["examples"] = blocks.get("examples", []) + MORE_EXAMPLES
    page = Manpage(parser, format="single-commands-section")
    page.description = _summary()
    page.source = f"esp-mirror {__version__}"
    page.manual = MANUAL
    page.section = SECTION
    page.date = date
    sections = {EPILOG_SECTIONS[heading]: _items(items) for heading, items in blocks.items()}
    for heading, content in (
        ("exit status", sections.get("exit status")),
        ("environment", ENVIRONMENT),
        ("files", FILES),
        ("examples", sections["examples"]),
        ("see also", SEE_ALSO),
    ):
        if content:
            page.add_section(heading, "=", content)
    return str(page)


def date_of(text: str) -> str | None:
    """The date in a page's .TH line, or None when it has none."""
    found = _TH_DATE.search(text)
    return found.group(1).replace("\\-", "-") if found else None


def shipped() -> Path:
    """The page in the source tree (package data of esp_mirror_plugin.man)."""
    return ROOT / "esp_mirror_plugin" / "man" / FILE


def current(text: str) -> bool:
    """Is ``text`` what the generator makes now (with the date it carries)?"""
    date = date_of(text)
    return date is not None and render(date) == text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=REGENERATE, description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when the page is not current")
    args = parser.parse_args(argv)
    path = shipped()
    old = path.read_text() if path.exists() else ""
    if current(old):
        print(f"{path} is current")
        return 0
    if args.check:
        print(f"{path} is not what the parser makes now: run {REGENERATE}", file=sys.stderr)
        return 1
    path.write_text(render(datetime.datetime.now(datetime.UTC).date().isoformat()))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
