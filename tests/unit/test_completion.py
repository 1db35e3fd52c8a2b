"""esp-mirror's bash completion: generated from the parser (ci/completion), shipped in the package,
the zip application and a pip install's prefix, installed by apply beside the manual page.

The drift test makes the script again and compares it with the shipped one; the bash tests source
the shipped script in a real bash (no bash-completion package needed) and complete command lines
with it, as bash does on a Tab.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import Mirror, fast_applier

from ci import completion as generator
from esp_mirror_plugin import cli, completion
from esp_mirror_plugin.hooks import installed
from esp_mirror_plugin.pipeline.bootloaders import BootloaderKind
from esp_mirror_plugin.pipeline.profiles import builtin_names
from esp_mirror_plugin.system import zipapp

SHIPPED = Path(completion.__file__).parent / completion.FILE


def test_the_shipped_script_is_what_the_generator_makes_from_the_current_parser():
    if SHIPPED.read_text() != generator.render():
        pytest.fail(f"{SHIPPED} is not what the parser makes now: run `{generator.REGENERATE}` and commit it")


def test_a_new_option_is_drift(monkeypatch):
    """The drift test can fail: the shipped script stops being current once the parser changes."""
    real = cli._parser

    def parser(argv: list[str]) -> argparse.ArgumentParser:
        built = real(argv)
        [sub] = [a for a in built._actions if isinstance(a, argparse._SubParsersAction)]
        sub.choices["status"].add_argument("--colour", choices=["red", "green"], help="x")
        return built

    monkeypatch.setattr(cli, "_parser", parser)
    assert generator.render() != SHIPPED.read_text()
    assert "'status --colour') echo 'none red green' ;;" in generator.render()


def test_a_value_the_generator_cannot_place_stops_it(monkeypatch):
    real = cli._parser

    def parser(argv: list[str]) -> argparse.ArgumentParser:
        built = real(argv)
        [sub] = [a for a in built._actions if isinstance(a, argparse._SubParsersAction)]
        sub.choices["status"].add_argument("--colour", metavar="COLOUR", help="x")
        return built

    monkeypatch.setattr(cli, "_parser", parser)
    with pytest.raises(generator.CompletionError, match="--colour's value 'COLOUR' is in neither PLACEHOLDERS"):
        generator.render()


# -- bash, with the shipped script --------------------------------------------------------------

COMPLETE = """\
source "$1"
shift
COMP_WORDS=("$@")
COMP_CWORD=$(($# - 1))
COMPREPLY=()
_esp_mirror
printf '%s\\n' "${COMPREPLY[@]}"
"""


def complete(*words: str, cwd: Path | None = None) -> list[str]:
    """What bash offers for the last of ``words`` (esp-mirror first), with the shipped script."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.fail("bash is missing", pytrace=False)
    done = subprocess.run(
        [bash, "--norc", "--noprofile", "-c", COMPLETE, "complete", str(SHIPPED), "esp-mirror", *words],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=cwd,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
    )
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    return [line for line in done.stdout.splitlines() if line]


@pytest.mark.real_processes
def test_a_command_completes_from_its_first_letters():
    assert complete("rep") == ["repair", "replace"]
    assert complete("--debug", "st") == ["status"]
    assert complete("") == list(cli._COMMANDS)


@pytest.mark.real_processes
def test_an_option_completes_from_its_first_letters():
    assert complete("apply", "--boot") == ["--bootloader"]
    assert complete("replace", "--o") == ["--old"]
    assert complete("--v") == ["--version"]


@pytest.mark.real_processes
def test_an_options_value_completes_from_its_choices():
    kinds = [str(kind) for kind in BootloaderKind]
    assert complete("apply", "--bootloader", "") == kinds
    assert complete("plan", "--bootloader", "=", "sy") == ["systemd-boot"]  # --bootloader=sy
    assert complete("heal", "--why", "h") == ["hot-plug", "hand"]
    assert complete("apply", "--esp-size", "") == []  # a size: no list to offer, and no option either


@pytest.mark.real_processes
def test_a_value_that_is_a_path_completes_with_files_and_its_words(tmp_path):
    (tmp_path / "disk-a.img").touch()
    (tmp_path / "root").mkdir()
    assert complete("replace", "--old", "mi") == ["missing"]
    assert complete("plan", "--disk", "disk", cwd=tmp_path) == ["disk-a.img"]
    assert complete("plan", "--target", "", cwd=tmp_path) == ["root"]
    assert complete("profiles", "deb") == ["debian"]
    assert set(complete("plan", "--profile", "", cwd=tmp_path)) == {*builtin_names(), "disk-a.img", "root"}


@pytest.mark.real_processes
def test_every_option_of_every_command_completes():
    parser = cli._parser([])
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, command in sub.choices.items():
        options = sorted(s for a in command._actions for s in a.option_strings)
        assert sorted(complete(name, "-")) == options, name


# -- shipped and installed ---------------------------------------------------------------------


def test_the_package_gives_the_script_it_ships():
    assert completion.script() == SHIPPED.read_bytes()
    assert completion.script().startswith(b"# bash completion for esp-mirror(8)")


@pytest.mark.real_processes
def test_the_zip_application_carries_the_script_and_reads_it_from_inside(tmp_path):
    app = tmp_path / "esp-mirror"
    app.write_bytes(zipapp.build().data)
    assert zipfile.ZipFile(app).read(f"esp_mirror_plugin/completion/{completion.FILE}") == SHIPPED.read_bytes()
    inner = (
        "import hashlib; from esp_mirror_plugin import completion; "
        "print(hashlib.sha256(completion.script()).hexdigest())"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {str(app)!r}); {inner}"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        cwd=tmp_path,
    )
    assert done.stdout.strip() == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()


def test_apply_installs_the_script_where_bash_completion_looks_and_a_second_apply_leaves_it(images):
    assert installed.COMPLETION == "/usr/local/share/bash-completion/completions/esp-mirror"
    plan = json.loads(images.cli("plan", "--json", *images.args()).out)
    [group] = [g for g in plan["groups"] if g["name"] == installed.GROUP]
    paths = [s.get("path") for s in group["steps"]]
    step = group["steps"][paths.index(f"{images.target}{installed.COMPLETION}")]
    assert paths.index(step["path"]) == paths.index(f"{images.target}{installed.MANUAL}") + 1  # beside the page
    assert (step["kind"], step["mode"], step["sha256"]) == (
        "install-program",
        "0644",
        hashlib.sha256(SHIPPED.read_bytes()).hexdigest(),
    )
    assert step["would_change"] is True

    assert images.cli("apply", "--yes", *images.args()).code == 0
    script = images.target / installed.COMPLETION.lstrip("/")
    assert script.read_bytes() == SHIPPED.read_bytes()
    again = json.loads(images.cli("plan", "--json", *images.args()).out)
    [group] = [g for g in again["groups"] if g["name"] == installed.GROUP]
    assert next(s for s in group["steps"] if s.get("path") == str(script))["would_change"] is False


def test_a_missing_script_is_a_status_problem_that_refresh_writes_again(mirror: Mirror, monkeypatch):
    script = mirror.sysroot / installed.COMPLETION.lstrip("/")
    assert script.read_bytes() == SHIPPED.read_bytes()  # the installed system as apply left it
    script.unlink()
    assert mirror.cli("status").code == 1
    mirror.accept_changes()
    fast_applier(mirror, monkeypatch)
    assert mirror.cli("refresh", "--yes").code == 0
    assert script.read_bytes() == SHIPPED.read_bytes()
    assert mirror.cli("status").code == 0
