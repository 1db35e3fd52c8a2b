"""esp-mirror's bash completion, generated from the command line's argparse parser.

The parser is walked (``esp_mirror_plugin.cli._parser``): its commands, each command's options,
and what each option's value is: its choices, or what its placeholder names (a disk, a file, a
directory, a profile, or literal words such as ``missing`` in ``DISK|missing``). The script is
made at development time and shipped as package data (esp_mirror_plugin/completion/), so it
needs neither Python nor esp-mirror when bash completes; it uses plain bash (compgen, mapfile)
and works with or without the bash-completion package. tests/unit/test_completion.py makes it
again and fails when the shipped one differs, and runs bash with it.

Regenerate (after changing a command, an option or its choices)::

    ci/completion            # writes esp_mirror_plugin/completion/esp-mirror
    ci/completion --check    # exit 1 when the shipped script is not what the parser makes now
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from esp_mirror_plugin import cli
from esp_mirror_plugin.completion import FILE
from esp_mirror_plugin.pipeline.profiles import builtin_names

ROOT = Path(__file__).resolve().parents[1]
REGENERATE = "ci/completion"  # the one command that writes the script again
FUNCTION = "_esp_mirror"

# What a value's placeholder (an option's metavar, else its dest in capitals) is completed with.
# A placeholder in neither table stops the generator: a new option says what its value is.
PLACEHOLDERS = {
    "DISK": "files",  # /dev/sda, /dev/disk/by-id/..., an image file
    "PARTITION": "files",
    "FILE": "files",
    "FILE.yaml": "files",
    "PATH": "files",
    "DIR": "dirs",
    "TARGET": "dirs",
    "BACKUP_DIR": "dirs",
    "PROFILE": "profiles",  # a built-in profile's name or a YAML file
    "NAME": "profiles",  # `esp-mirror profiles NAME`
}
NOTHING = {  # values no list can offer: sizes, names, labels, digests, numbers
    "ESP_SIZE",
    "MOUNTPOINT",
    "LABEL",
    "ARRAY_NAME",
    "METADATA",
    "LOADER_ID",
    "ENTRY_LABEL",
    "DIGEST",
    "SECONDS",
}


class CompletionError(Exception):
    """The parser has a value the generator cannot place; the message says what to add."""


@dataclass(frozen=True)
class Value:
    """How one option's (or positional's) value is completed: literal words, and files,
    directories or nothing beside them."""

    words: tuple[str, ...]
    kind: str  # "files", "dirs" or "none"

    def shell(self) -> str:
        return " ".join([self.kind, *self.words])


def value_of(action: argparse.Action) -> Value | None:
    """What completes the value ``action`` takes; None when it takes none (a switch)."""
    if action.nargs == 0:
        return None
    if action.choices is not None:
        return Value(tuple(str(c) for c in action.choices), "none")
    placeholder = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    words: list[str] = []
    kind = "none"
    for part in placeholder.split("|"):
        if part.islower():  # a literal word: missing, auto
            words.append(part)
        elif part in PLACEHOLDERS:
            kind = PLACEHOLDERS[part]
        elif part not in NOTHING:
            where = action.option_strings[0] if action.option_strings else action.dest
            raise CompletionError(
                f"{where}'s value {part!r} is in neither PLACEHOLDERS nor NOTHING of ci/completion.py: say what "
                "completes it"
            )
    if kind == "profiles":
        return Value((*words, *builtin_names()), "files")
    return Value(tuple(words), kind)


@dataclass(frozen=True)
class Command:
    name: str  # "" for esp-mirror's own options
    options: tuple[str, ...]
    values: dict[str, Value]  # option string -> what completes its value
    positional: Value | None  # the value of its positional argument, if it takes one


def _command(name: str, parser: argparse.ArgumentParser) -> Command:
    options: list[str] = []
    values: dict[str, Value] = {}
    positional = None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        value = value_of(action)
        if not action.option_strings:
            positional = value
            continue
        options += action.option_strings
        if value is not None:
            values.update(dict.fromkeys(action.option_strings, value))
    return Command(name, tuple(sorted(options)), values, positional)


def commands() -> list[Command]:
    """esp-mirror's own options (command ""), then every command, as the parser has them."""
    parser = cli._parser([])
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [_command("", parser), *(_command(name, p) for name, p in sub.choices.items())]


HEADER = f"""\
# bash completion for esp-mirror(8): its commands, their options and the values they take.
# Generated from esp-mirror's parser by {REGENERATE}: do not edit.
"""

MAIN = f"""\
{FUNCTION}_reply() {{  # $1: the word so far, $2: files, dirs or none, then the words it may be
    local cur=$1 kind=$2
    shift 2
    mapfile -t COMPREPLY < <(compgen -W "$*" -- "$cur")
    case $kind in
        files) compopt -o filenames 2>/dev/null; mapfile -t -O "${{#COMPREPLY[@]}}" COMPREPLY < <(compgen -f -- "$cur") ;;
        dirs) compopt -o filenames 2>/dev/null; mapfile -t -O "${{#COMPREPLY[@]}}" COMPREPLY < <(compgen -d -- "$cur") ;;
    esac
}}

{FUNCTION}() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev= command= i value
    ((COMP_CWORD > 0)) && prev=${{COMP_WORDS[COMP_CWORD - 1]}}
    if [[ $cur == = ]]; then  # --option=: bash splits the word at =
        cur=
    elif [[ $prev == = ]] && ((COMP_CWORD > 1)); then
        prev=${{COMP_WORDS[COMP_CWORD - 2]}}
    fi
    for ((i = 1; i < COMP_CWORD; i++)); do  # the command: the first word that is no option
        if [[ ${{COMP_WORDS[i]}} != -* ]]; then
            command=${{COMP_WORDS[i]}}
            break
        fi
    done
    value=$({FUNCTION}_value "$command" "$prev")
    if [[ -n $value ]]; then
        {FUNCTION}_reply "$cur" $value
    elif [[ -z $command && $cur != -* ]]; then
        {FUNCTION}_reply "$cur" none $({FUNCTION}_commands)
    elif [[ $cur == -* ]] || ! value=$({FUNCTION}_positional "$command"); then
        {FUNCTION}_reply "$cur" none $({FUNCTION}_options "$command")
    else
        {FUNCTION}_reply "$cur" $value
    fi
}}

complete -F {FUNCTION} esp-mirror
"""


def _case(function: str, doc: str, subject: str, arms: list[tuple[str, str]], otherwise: str = "") -> str:
    """A shell function that prints the text of the first arm whose pattern matches ``subject``."""
    lines = [f"{function}() {{  # {doc}", f"    case {subject} in"]
    lines += [f"        {pattern}) echo {shlex.quote(text)} ;;" for pattern, text in arms]
    if otherwise:
        lines.append(f"        *) {otherwise} ;;")
    lines += ["    esac", "}", ""]
    return "\n".join(lines)


def render() -> str:
    """The script for the current parser.

    :raises CompletionError: an option's value is not placed (see :data:`PLACEHOLDERS`).
    """
    found = commands()
    names = [c.name for c in found if c.name]
    values = [
        (f"{shlex.quote(c.name + ' ' + option) if c.name else shlex.quote(' ' + option)}", value.shell())
        for c in found
        for option, value in c.values.items()
    ]
    return "\n".join(
        [
            HEADER,
            f"{FUNCTION}_commands() {{  # the commands\n    echo {shlex.quote(' '.join(names))}\n}}\n",
            _case(
                f"{FUNCTION}_options",
                "$1: a command (empty: esp-mirror itself): its options",
                '"$1"',
                [(shlex.quote(c.name) if c.name else '""', " ".join(c.options)) for c in found],
            ),
            _case(
                f"{FUNCTION}_value",
                "$1: a command, $2: its option: what completes the option's value (nothing: it takes none)",
                '"$1 $2"',
                values,
            ),
            _case(
                f"{FUNCTION}_positional",
                "$1: a command: what completes its positional argument (status 1: it takes none)",
                '"$1"',
                [(shlex.quote(c.name), c.positional.shell()) for c in found if c.name and c.positional is not None],
                otherwise="return 1",
            ),
            MAIN,
        ]
    )


def shipped() -> Path:
    """The script in the source tree (package data of esp_mirror_plugin.completion)."""
    return ROOT / "esp_mirror_plugin" / "completion" / FILE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=REGENERATE, description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when the script is not current")
    args = parser.parse_args(argv)
    path = shipped()
    old = path.read_text() if path.exists() else ""
    new = render()
    if old == new:
        print(f"{path} is current")
        return 0
    if args.check:
        print(f"{path} is not what the parser makes now: run {REGENERATE}", file=sys.stderr)
        return 1
    path.write_text(new)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
