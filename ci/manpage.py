"""esp-mirror(8), generated from the command line's argparse parser by argparse-manpage.

The page is made at development time and shipped as package data (esp_mirror_plugin/man/): at run
time esp-mirror depends on pluggy, PyYAML and sh only, so apply installs the page it carries. The
SYNOPSIS, DESCRIPTION and every command with its options come from the parser
(``esp_mirror_plugin.cli._parser``); the sections the parser cannot say (exit status, environment,
files, examples, see also) are written below, once, with the paths taken from the modules that
write them. tests/unit/test_manpage.py regenerates the page and fails when the shipped one differs.

argparse wraps the text at :data:`WIDTH` columns whatever the terminal, so the page is the same
wherever it is made; each usage is set without filling (``.nf``), as argparse wraps it, and the
page has no hyphenation (``.nh``): its words are options, commands and paths.

Regenerate (after changing an option, a help text or a section here)::

    ci/manpage            # writes esp_mirror_plugin/man/esp-mirror.8
    ci/manpage --check    # exit 1 when the shipped page is not what the parser makes now

The page's date (in its .TH line) is the day its text last changed: kept while the rest is the same.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import re
import sys
import tomllib
from pathlib import Path

from argparse_manpage.manpage import Manpage, _ManpageFormatter

from esp_mirror_plugin import __version__, cli, completion
from esp_mirror_plugin.hooks import anycaller, heal, initramfs, installed, periodic, upgrades
from esp_mirror_plugin.host import BLOCK_PLUGINS_ENV
from esp_mirror_plugin.man import FILE
from esp_mirror_plugin.pipeline import record
from esp_mirror_plugin.pipeline.kinds import OwnCheck
from esp_mirror_plugin.pipeline.profiles import builtin_names, load_profile
from esp_mirror_plugin.pipeline.request import METRICS_DIR
from esp_mirror_plugin.system import lock, state
from esp_mirror_plugin.upkeep import metrics
from esp_mirror_plugin.upkeep.commands import WORK_DIR

ROOT = Path(__file__).resolve().parents[1]
REGENERATE = "ci/manpage"  # the one command that writes the page again
SECTION = 8
MANUAL = "System Manager's Manual"
# argparse wraps the usage lines and help texts at this width, whatever the terminal's: the page
# is the same wherever it is made, and a usage line (7 columns in, in a command's subsection)
# fits an 80-column man(1) as argparse wrapped it
WIDTH = 71
_TH_DATE = re.compile(r'^\.TH \S+ "[^"]*" "([^"]*)"', re.MULTILINE)


def _roff(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped, no line starting a request."""
    escaped = text.replace("\\", "\\\\").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", escaped, flags=re.MULTILINE)


def _items(items: list[tuple[str, str]]) -> str:
    """A tagged list: each (term, text) a .TP paragraph, the term in bold."""
    return "\n".join(f".TP\n.B {_roff(term)}\n{_roff(text)}" for term, text in items)


def usage(parser: argparse.ArgumentParser) -> str:
    """The parser's usage as argparse wraps it (at :data:`WIDTH`), without its "usage: " prefix:
    under the command's heading (or SYNOPSIS) it says nothing, and its 7 columns keep the longest
    line of apply's usage within an 80-column man(1)."""
    formatter = argparse.HelpFormatter(parser.prog, width=WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return formatter.format_help().strip("\n")


def _no_fill(text: str) -> str:
    """Lines as they are: no filling, no adjusting, no hyphenation (``.nf`` ... ``.fi``)."""
    return f".nf\n{text}\n.fi"


class _Formatter(_ManpageFormatter):  # type: ignore[misc]
    """argparse-manpage's formatter, but a command's usage renders as argparse wraps it (its own
    line breaks and indentation, no filling or hyphenation: :func:`usage`), and a command whose
    description is its help text says it once."""

    def _format_parser(
        self,
        parser: argparse.ArgumentParser,
        subcommand: str | None = None,
        aliases: list[str] | None = None,
        help: str | None = None,
        extra_description: str | None = None,
    ) -> list[str]:
        if subcommand and parser.description == help:
            parser.description = None  # the help text above the usage says it already
        lines: list[str] = super()._format_parser(parser, subcommand, aliases, help, extra_description)
        if subcommand:
            filled = self.format_text(parser.format_usage())  # what argparse-manpage put there
            lines[lines.index(filled)] = _no_fill(self.format_text(usage(parser)))
        return lines


def _fixed_width(parser: argparse.ArgumentParser) -> None:
    """The parser (and its commands' parsers) format at :data:`WIDTH` columns."""
    parser.formatter_class = functools.partial(parser.formatter_class, width=WIDTH)  # type: ignore[call-arg]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _fixed_width(sub)


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


def _cron_files() -> str:
    """The weekly check's and the metrics' scripts where the profile's own check is cron's."""
    kinds = [OwnCheck.CRON_WEEKLY, OwnCheck.PERIODIC_WEEKLY]
    weekly = [_root(f"{periodic.CRON_DIRS[kind]}/{periodic.UNIT}") for kind in kinds]
    often = [_root(f"{periodic.REFRESH_DIRS[kind][0]}/{periodic.METRICS_UNIT}") for kind in kinds]
    return f"{' or '.join(weekly)}, and {' or '.join(often)}"


FILES = _items(
    [
        (heal.PROGRAM, "esp-mirror on the installed system: one Python zip application, written by apply and refresh."),
        (
            installed.MANUAL,
            "This manual page, written with it (a pip install has it in its prefix, share/man/man8/esp-mirror.8).",
        ),
        (
            installed.COMPLETION,
            "esp-mirror's bash completion, written with it (a pip install has it in its prefix, "
            f"share/bash-completion/completions/{completion.FILE}).",
        ),
        (_root(record.PATH), "What apply set up, which the commands after install read."),
        (
            _mdadm_confs(),
            "The array's ARRAY line, in a block marked as esp-mirror's (the path is the profile's).",
        ),
        ("/etc/fstab", "The mount of the array's FAT at the mount point, in a block marked as esp-mirror's."),
        (
            f"{_root(initramfs.DRACUT_DROPIN)}, {_root(initramfs.MKINITCPIO_DROPIN)}, {_root(initramfs.MKINITFS_CONF)}",
            "The initramfs generator's settings for the array, as the profile's generator has them: a dracut "
            f"drop-in, a mkinitcpio drop-in (a marked block in {_root(initramfs.MKINITCPIO_CONF)} for a "
            "mkinitcpio before 36, profile key dropin_dir: false), the raid feature in a marked block for "
            "mkinitfs; initramfs-tools needs none.",
        ),
        (
            f"/{state.STATE_DIR}/",
            f"State: {_in_state(state.HISTORY)} (one line per heal, replace, add and repair), "
            f"{_in_state(state.LAST_CHECK)} (the last check's result), {_in_state(state.REPAIR_JOURNAL)}, "
            f"{_in_state(state.ADOPT_JOURNAL)} and {_in_state(state.RELEASE_JOURNAL)} (a repair, an adoption or a "
            "release not finished yet), "
            f"{_in_state(state.ADOPT_BACKUPS)}/ (adopt's backups), the files repair overwrites (its "
            f"--backup-dir), {_in_state(state.INITRAMFS_STAMP)} (what the initramfs was last rebuilt from).",
        ),
        (
            "/etc/systemd/system/esp-mirror-heal.service, esp-mirror-heal@.service",
            "heal at boot, and for a member's partition that appears (systemd); /etc/udev/rules.d/"
            "65-esp-mirror-heal.rules starts it. Elsewhere heal runs at boot from /etc/local.d/"
            "esp-mirror-heal.start (OpenRC) or a marked block in /etc/rc.local.",
        ),
        (
            f"/etc/systemd/system/{periodic.UNIT}.timer, {periodic.UNIT}.service, {periodic.METRICS_UNIT}.timer, "
            f"{periodic.METRICS_UNIT}.service",
            f"The weekly check and the refresh of the metrics ({metrics.FILE_NAME} in the node_exporter "
            f"textfile directory, by default {METRICS_DIR}). Without systemd: {_cron_files()}.",
        ),
        (
            upgrades.PRESEED,
            "The debconf answers of the GRUB and shim packages (Debian, Ubuntu): their upgrades run "
            "grub-install onto the array without touching NVRAM and refresh the fallback path. Loaded "
            "with debconf-set-selections by apply and refresh.",
        ),
        (
            f"/etc/environment, {_root(upgrades.SYSTEM_CONF_DROPIN)}, {_root(upgrades.BOOT_UPDATE_DROPIN)}",
            f"{upgrades.RELAX}=1 where bootctl is installed (systemd-boot): bootctl accepts the ESP on md only "
            "with it. A marked block for logins and sudo, drop-ins for systemd's services and "
            "systemd-boot-update.service.",
        ),
        (
            ", ".join(sorted({_root(path) for path, _, _ in (*upgrades.FWUPD_19, *upgrades.FWUPD_18)})),
            "Where fwupd is installed, the ESP's mount point for its capsules, in a marked block: "
            + "; ".join(
                f"{key} in [{section}] of {_root(path).rsplit('/', 1)[1]}"
                for path, section, key in (*upgrades.FWUPD_19, *upgrades.FWUPD_18)
            )
            + " (by the files its version reads).",
        ),
        (
            anycaller.GUARD,
            "Stops kernel and bootloader hooks loudly when the mirror is not mounted; run from "
            f"{', '.join(f'{d}/{anycaller.HOOK_NAME}' for d in anycaller.HOOK_DIRS)}, "
            f"{anycaller.KERNEL_INSTALL_PLUGIN}, {anycaller.APT_HOOK} and {anycaller.PACMAN_HOOK}, as each "
            f"distribution has them. kernel-install is told where the ESP is (BOOT_ROOT in a marked block of "
            f"{anycaller.INSTALL_CONF}). bootctl is wrapped ({anycaller.BOOTCTL}, its original kept as "
            f"{anycaller.DIVERTED}, or {anycaller.LOCAL_BOOTCTL}).",
        ),
        (
            lock.PATH,
            "One esp-mirror at a time: apply, adopt and every command after install but status hold a lock "
            "on it while they run, and write into it who holds it (pid, command line, since when); status "
            "shows it, and a second command waits for it, then names that holder.",
        ),
        (
            f"{WORK_DIR}/",
            "Private scratch directories check and repair copy the members' files into, removed afterwards.",
        ),
    ]
)


# Examples of the commands after install, beside the parser's own (its epilog's "examples:");
# tests/unit/test_manpage.py parses each and checks what it can of them (adopt: two disks).
MORE_EXAMPLES = [
    (
        "sudo esp-mirror adopt --dry-run --disk /dev/sda --disk /dev/sdb",
        "how this running system's ESP (on /dev/sda) would be taken into a mirror with /dev/sdb (changes nothing)",
    ),
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
    _fixed_width(parser)
    page = Manpage(parser, format="single-commands-section")
    page.mf = _Formatter(page.prog, page.formatter, format=page.format)
    page.description = _summary()
    page.source = f"esp-mirror {__version__}"
    page.manual = MANUAL
    page.section = SECTION
    page.date = date
    sections = {EPILOG_SECTIONS[heading]: _items(items) for heading, items in blocks.items()}
    synopsis = _roff(usage(parser)).replace("esp\\-mirror", "\\fBesp\\-mirror\\fR", 1)
    for heading, content in (
        ("synopsis", _no_fill(synopsis)),
        ("exit status", sections.get("exit status")),
        ("environment", ENVIRONMENT),
        ("files", FILES),
        ("examples", sections["examples"]),
        ("see also", SEE_ALSO),
    ):
        if content:
            page.add_section(heading, "=", content)
    # no hyphenation and a ragged right margin on the whole page: it is made of option names,
    # commands and paths, which a hyphen or a stretched space would misquote
    return re.sub(r"^(\.TH .*\n)", r"\1.nh\n.ad l\n", str(page), count=1)


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
