"""The README and docs/ say what is true of this tree: every `esp-mirror` command line in them
parses, every relative link (and its #anchor) resolves, every setting and metric is documented,
the README stays short, and no dated diary creeps back in (dates live in docs/numbers.md's table)."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from ci.readme_installer import readme_example
from esp_mirror_plugin.cli import _parser
from esp_mirror_plugin.errors import MEANINGS, BadInput
from esp_mirror_plugin.hooks.installed import UPKEEP_PROGRAMS
from esp_mirror_plugin.pipeline.profiles import builtin_names, load_profile
from esp_mirror_plugin.pipeline.request import settings
from esp_mirror_plugin.upkeep.metrics import FAMILIES

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
NUMBERS = REPO_ROOT / "docs" / "numbers.md"
SHELL_BLOCKS = ("", "sh", "bash", "console", "shell")
SHELL_OPERATORS = {"|", "||", "&&", ";", "&"}
MONTHS = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec"
DATE = re.compile(rf"\b\d{{4}}-\d{{2}}-\d{{2}}\b|\b(?:{MONTHS})[a-z]*\.? +(?:\d{{1,2}},? +)?\d{{4}}\b")
DIARY = ("last stop", "this stop", "closing note", "run on main at")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def rel(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


@dataclass(frozen=True)
class CommandLine:
    where: str  # file:line
    argv: list[str]  # the arguments after esp-mirror


def code_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, line number of the first line, lines) of each fenced block, indented ones too."""
    blocks: list[tuple[str, int, list[str]]] = []
    lines = text.splitlines()
    n = 0
    while n < len(lines):
        opening = re.match(r"^\s*```(\S*)\s*$", lines[n])
        if opening:
            body: list[str] = []
            start = n + 2
            n += 1
            while n < len(lines) and not re.match(r"^\s*```\s*$", lines[n]):
                body.append(lines[n])
                n += 1
            blocks.append((opening.group(1), start, body))
        n += 1
    return blocks


def esp_mirror_commands(line: str) -> list[list[str]]:
    """The argument lists of every esp-mirror command in one shell line: split at | && || ;
    and at redirections, past VAR=value assignments; the program may be any path ending in
    esp-mirror (.venv/bin/esp-mirror, /usr/local/sbin/esp-mirror, ./esp-mirror)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    segments: list[list[str]] = [[]]
    for token in tokens:
        if token in SHELL_OPERATORS:
            segments.append([])
        else:
            segments[-1].append(token)
    found = []
    for segment in segments:
        words = []
        for token in segment:
            if set(token) <= set("<>&|;()"):  # a redirection: the rest is its target
                if words and words[-1].isdigit():
                    words.pop()
                break
            words.append(token)
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words.pop(0)
        if words and Path(words[0]).name == "esp-mirror":
            found.append(words[1:])
    return found


def commands_in(text: str, name: str) -> list[CommandLine]:
    """The esp-mirror command lines of a page's shell blocks: continuation lines joined, a `$ `
    prompt dropped; in a console block only the prompted lines are commands (the rest is output)."""
    out = []
    for language, start, body in code_blocks(text):
        if language not in SHELL_BLOCKS:
            continue
        pending = ""
        for offset, raw in enumerate(body):
            line = raw.strip()
            if not pending and language == "console":
                if not line.startswith(("$ ", "# ")):
                    continue
                line = line[2:]
            elif not pending and line.startswith("$ "):
                line = line[2:]
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            where = f"{name}:{start + offset}"
            out.extend(CommandLine(where, argv) for argv in esp_mirror_commands(pending + line))
            pending = ""
    return out


def command_lines() -> list[CommandLine]:
    return [c for page in PAGES for c in commands_in(page.read_text(), rel(page))]


def test_the_readme_is_for_users_and_short():
    assert README.stat().st_size < 15_000, f"README.md is {README.stat().st_size} bytes: move detail into docs/"


def test_the_command_finder_sees_pipes_prompts_assignments_and_redirections():
    """The parser check below is only as good as the finder: a line it misread would pass unseen."""
    assert esp_mirror_commands("esp-mirror status --json | jq .exit_code") == [["status", "--json"]]
    assert esp_mirror_commands("X=1 /usr/local/sbin/esp-mirror check > /dev/null 2>&1") == [["check"]]
    assert esp_mirror_commands("mdadm --detail /dev/md/esp   # which member") == []
    assert esp_mirror_commands("esp-mirror heal --dry-run && esp-mirror entries --yes") == [
        ["heal", "--dry-run"],
        ["entries", "--yes"],
    ]
    console = "```console\n$ esp-mirror add \\\n    --disk /dev/sdc --yes\nesp-mirror: added\n```\n"
    assert [c.argv for c in commands_in(console, "t")] == [["add", "--disk", "/dev/sdc", "--yes"]]
    sh = "   ```sh\n   # a comment\n   esp-mirror replace --old missing \\\n       --new /dev/sdc --yes\n   ```\n"
    assert [c.argv for c in commands_in(sh, "t")] == [["replace", "--old", "missing", "--new", "/dev/sdc", "--yes"]]


def test_there_are_enough_command_lines_to_check():
    found = command_lines()
    commands = {c.argv[0] for c in found if c.argv}
    assert len(found) >= 25, [c.where for c in found]
    assert commands >= {"plan", "apply", "adopt", "status", "check", "repair", "replace", "heal"}, commands


@pytest.mark.parametrize("command", command_lines(), ids=lambda c: c.where)
def test_every_esp_mirror_command_line_in_the_docs_parses(command: CommandLine):
    shown = f"{command.where}: esp-mirror {shlex.join(command.argv)}"
    code: int | str | None = 0
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # --version and --help print, then exit 0
            _parser(command.argv).parse_args(command.argv)
    except BadInput as exc:
        pytest.fail(f"{shown}: {exc}")
    except SystemExit as exc:
        code = exc.code
    assert code == 0, shown


def test_a_wrong_command_line_would_be_caught():
    """The parse test above can fail: a misspelt option is bad input."""
    argv = ["replace", "--old", "missing", "--neww", "/dev/sdc"]
    with pytest.raises(BadInput):
        _parser(argv).parse_args(argv)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to dashes."""
    out = set()
    in_code = False
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        heading = None if in_code else re.match(r"^#{1,6} +(.*?) *#*$", line)
        if heading:
            text = re.sub(r"[^\w\- ]", "", heading.group(1).lower())
            out.add(text.replace(" ", "-"))
    return out


def test_anchor_slugs_follow_github():
    page = REPO_ROOT / "README.md"
    assert "when-a-disk-dies-3-am-version" in anchors(page)


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_relative_link_points_at_a_file_that_exists(page: Path):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading for #{anchor}")
    assert broken == []


def test_docs_exist_and_the_readme_links_each():
    names = {p.name for p in DOCS}
    assert names >= {"using.md", "operating.md", "testing.md", "numbers.md"}
    readme = README.read_text()
    for page in DOCS:
        assert f"](docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"
    assert "](ARCHITECTURE.md)" in readme


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_no_diary(page: Path):
    text = page.read_text()
    lowered = text.lower()
    assert [phrase for phrase in DIARY if phrase in lowered] == []
    dated = [
        f"{rel(page)}:{n}: {line.strip()[:80]}"
        for n, line in enumerate(text.splitlines(), 1)
        if DATE.search(line) and not (page == NUMBERS and line.startswith("|"))
    ]
    assert dated == [], "dates belong in docs/numbers.md's table only"


def test_the_date_check_sees_dates():
    assert DATE.search("Its run of 2026-12-06 converged")
    assert DATE.search("measured in Dec 2026")
    assert DATE.search("on December 6, 2026")
    assert not DATE.search("Ubuntu 22.04-25.04, systemd 252, Debian 12")


def test_every_numbers_row_has_a_date_and_a_method():
    rows = [line for line in NUMBERS.read_text().splitlines() if line.startswith("|")][2:]
    assert len(rows) >= 10
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 4, row
        what, result, method, date = cells
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", date), row
        assert what and result and method, row


def table_rows(page: Path, heading: str) -> list[list[str]]:
    """The cells of each row of the first table under ``heading`` (a markdown heading's text)."""
    lines = page.read_text().splitlines()
    start = next(n for n, line in enumerate(lines) if re.match(rf"^#+ {re.escape(heading)}$", line))
    rows: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # past the header and the |---| line


def test_the_settings_table_has_every_setting_of_plan_and_apply():
    """docs/using.md's settings table is the user's copy of request.py's fields (the Ansible apply
    module's options are these too): a new field without its row fails here."""
    rows = table_rows(REPO_ROOT / "docs/using.md", "The settings table")
    by_key = {re.match(r"`(\w+)`", row[1]).group(1): row for row in rows if row[1].startswith("`")}  # type: ignore[union-attr]
    assert set(by_key) == set(settings()), "the settings table's config keys are not request.py's settings"
    for name, setting in settings().items():
        option = by_key[name][0]
        if setting.option is None:
            assert option == "(config file only)", by_key[name]
        else:
            assert option.startswith(f"`{setting.option or '--' + name.replace('_', '-')}"), by_key[name]


def test_every_metric_is_in_the_metrics_table():
    rows = table_rows(REPO_ROOT / "docs/operating.md", "Metrics")
    names = {re.match(r"`([a-z_]+)", row[0]).group(1) for row in rows}  # type: ignore[union-attr]
    assert names == set(FAMILIES)


def test_every_command_is_in_the_commands_table():
    rows = table_rows(REPO_ROOT / "docs/using.md", "Commands")
    argv = ["status"]
    sub = next(a for a in _parser(argv)._actions if a.dest == "command")
    commands = set(sub.choices)  # type: ignore[arg-type]
    assert {row[0].split()[1].strip("`") for row in rows} == commands


def test_the_installer_example_is_found_in_the_readme():
    """tests/vm/test_readme_installer.py runs this block: it must stay one block, calling the
    four hooks in their order."""
    example = readme_example()
    compile(example, "README.md (installer example)", "exec")
    hooks = re.findall(r"pm\.hook\.(\w+)\(", example)
    assert hooks == ["pre_partition", "post_format", "initramfs_config", "bootloader"]


def test_the_readme_says_each_exit_code_in_the_words_of_the_code():
    """README's table, --help and the manual page say one meaning per exit code: errors.MEANINGS."""
    rows = table_rows(README, "Exit codes")
    assert {int(code): meaning.replace("`", "") for code, meaning in rows} == {
        int(code): meaning for code, meaning in MEANINGS.items()
    }


# What the README's host-packages block installs: the programs esp-mirror runs on the machine it
# runs on, but for util-linux (and Debian's mount), which those distributions' base systems hold
HOST_PROGRAMS = (
    *(
        "mdadm",
        "sgdisk",
        "mkfs.vfat",
        "fsck.fat",
        "fatlabel",
        "mdir",
        "mcopy",
        "efibootmgr",
        "wipefs",
        "blkid",
        "partx",
    ),
)
BASE_PACKAGES = {"util-linux", "sys-apps/util-linux", "mount"}


def test_the_readme_names_the_host_packages_of_every_profile_as_the_profiles_do():
    text = README.read_text()
    block = text.split("<!-- host-packages:", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    named: dict[str, list[str]] = {}
    for line in block.splitlines():
        command, _, names = line.partition("#")
        for name in (n.strip() for n in names.split(",")):
            named[name] = command.split()
    assert sorted(named) == builtin_names()
    for name, words in named.items():
        profile = load_profile(name)
        packages = dict.fromkeys(profile.package_for(program) for program in HOST_PROGRAMS)
        expected = [*profile.packages.install, *(p for p in packages if p not in BASE_PACKAGES)]
        assert words == expected, name
    assert set(HOST_PROGRAMS) >= set(UPKEEP_PROGRAMS)  # the installed esp-mirror's programs among them
