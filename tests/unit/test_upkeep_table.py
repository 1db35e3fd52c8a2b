"""One table lists the upkeep commands (esp_mirror_plugin/upkeep/table.py): the parser is built
from it, every row names a work function and a renderer that exist, and building the parser
(``--version``, ``plan``) loads nothing of upkeep/ but the table.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest

from esp_mirror_plugin import cli
from esp_mirror_plugin.cli import upkeep as cli_upkeep
from esp_mirror_plugin.upkeep import commands, plans
from esp_mirror_plugin.upkeep.table import UPKEEP, Command


@pytest.mark.parametrize("name", list(UPKEEP))
def test_each_row_names_its_work_in_upkeep_commands_and_its_output_in_cli_upkeep(name):
    row = UPKEEP[name]
    work, show = getattr(commands, row.work), getattr(cli_upkeep, row.show)
    assert list(inspect.signature(work).parameters) == ["call"]
    assert len(inspect.signature(show).parameters) == 3  # (args, what work hands to Call.show, out)


def test_the_parser_has_one_command_per_row_with_the_rows_options():
    parser = cli._parser([])
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, row in UPKEEP.items():
        flags = [s for a in sub.choices[name]._actions for s in a.option_strings if s not in ("-h", "--help")]
        assert flags == [o.flag for o in row.options], name
        assert sub.choices[name].description == row.help


LOADED = """
import sys
from esp_mirror_plugin import cli
try:
    cli.main(["--version"])
except SystemExit:
    pass
after_version = sorted(sys.modules)
cli._parser(["plan", "--disk", "/dev/vda"]).parse_args(["plan", "--disk", "/dev/vda"])
import esp_mirror_plugin.cli.install  # what plan runs
print(json.dumps([after_version, sorted(sys.modules)]))
"""


@pytest.mark.real_processes  # a fresh Python, to see what it loads
def test_version_and_plan_load_no_upkeep_module_but_the_table():
    done = subprocess.run(
        [sys.executable, "-c", "import json\n" + LOADED], capture_output=True, text=True, check=True, timeout=60
    )
    for loaded in json.loads(done.stdout.splitlines()[-1]):
        ours = [m for m in loaded if m.startswith(("esp_mirror_plugin.upkeep", "esp_mirror_plugin.cli.upkeep"))]
        assert ours == ["esp_mirror_plugin.upkeep", "esp_mirror_plugin.upkeep.table"]


def test_a_row_is_all_a_command_needs_besides_its_work_and_its_output(mirror, monkeypatch):
    """A new row (here one without options, not even --json) runs: its work under no lock, its
    result shown as text."""
    row = Command("hello", "print the mirror's array name", work="run_hello", show="show_hello", lock=None)
    monkeypatch.setitem(UPKEEP, "hello", row)
    monkeypatch.setitem(cli._COMMANDS, "hello", row.help)  # what cli built from the table on import
    monkeypatch.setattr(
        commands, "run_hello", lambda call: call.show(plans.require_array(commands.mirror_of(call))) or 0, raising=False
    )
    monkeypatch.setattr(cli_upkeep, "show_hello", lambda args, array, out: print(array.device, file=out), raising=False)

    done = mirror.cli("hello")

    assert (done.code, done.out, done.err) == (0, "/dev/md/esp\n", "")
