"""The Ansible modules of ansible/ansible_collections/esp_mirror/mirror, run as Ansible runs them:
their arguments through AnsibleModule (``patch_module_args``, Ansible's own unit-test helper), and
esp-mirror a fake program in tmp_path that records its argv and prints a canned answer. The
canned JSON is what this esp-mirror prints on the fake machines of conftest, so the modules are
held to the real reports."""

from __future__ import annotations

import importlib
import json
import os
import stat
import sys
from pathlib import Path

import pytest
import yaml
from conftest import fast_applier

from esp_mirror_plugin.errors import MEANINGS, ExitCode
from esp_mirror_plugin.pipeline.request import Kind, choices, default_of, settings

pytest.importorskip("ansible")
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

REPO_ROOT = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO_ROOT / "ansible"
PACKAGE = "ansible_collections.esp_mirror.mirror.plugins.modules"
MIB = 1024 * 1024

pytestmark = pytest.mark.real_processes  # the modules run the fake esp-mirror as a real process

FAKE = """\
#!{python}
import json, pathlib, sys
here = pathlib.Path(__file__).parent
argv = sys.argv[1:]
config = argv[argv.index("--config") + 1] if "--config" in argv else None
run = {{"argv": sys.argv, "config": pathlib.Path(config).read_text() if config else None}}
with open(here / "calls.jsonl", "a") as calls:
    calls.write(json.dumps(run) + "\\n")
command = next(a for a in argv if not a.startswith("-"))
answer = json.loads((here / "answers.json").read_text())[command + (" --dry-run" if "--dry-run" in argv else "")]
sys.stdout.write(answer["stdout"])
sys.stderr.write(answer["stderr"])
sys.exit(answer["rc"])
"""


class FakeEspMirror:
    """``esp-mirror`` in a directory of its own: records each run, answers per command."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.dir = directory
        self.path = directory / "esp-mirror"
        self.path.write_text(FAKE.format(python=sys.executable))
        self.path.chmod(self.path.stat().st_mode | stat.S_IXUSR)
        self.answers: dict[str, dict] = {}

    def answer(self, command: str, rc: int = 0, *, report: dict | None = None, stderr: str = "") -> None:
        """What ``esp-mirror COMMAND`` (e.g. "plan", "replace --dry-run") prints and exits with."""
        stdout = json.dumps(report, indent=2) + "\n" if report is not None else ""
        self.answers[command] = {"rc": rc, "stdout": stdout, "stderr": stderr}
        (self.dir / "answers.json").write_text(json.dumps(self.answers))

    @property
    def runs(self) -> list[dict]:
        calls = self.dir / "calls.jsonl"
        return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []

    @property
    def argvs(self) -> list[list[str]]:
        return [[os.path.basename(r["argv"][0]), *r["argv"][1:]] for r in self.runs]


@pytest.fixture
def fake(tmp_path: Path) -> FakeEspMirror:
    return FakeEspMirror(tmp_path / "fake-bin")


@pytest.fixture(autouse=True)
def _collection_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The collection as Ansible ships it to a host (ansible_collections.esp_mirror.mirror), and no
    syslog line from the module framework."""
    monkeypatch.syspath_prepend(str(COLLECTIONS))
    monkeypatch.setattr(basic.AnsibleModule, "log", lambda self, msg, log_args=None: None)


def module(name: str):
    return importlib.import_module(f"{PACKAGE}.{name}")


def run(name: str, args: dict, tmp_path: Path, capsys, *, check: bool = False, diff: bool = False) -> dict:
    """Run module NAME with ARGS as Ansible does; return its result (``failed`` set on failure)."""
    module_tmp = tmp_path / "module-tmp"  # given, as Ansible's action plugins do: the module then
    module_tmp.mkdir(exist_ok=True)  # leaves no atexit rmtree of a dir pytest removes first
    internal = {
        "_ansible_module_name": f"esp_mirror.mirror.{name}",
        "_ansible_check_mode": check,
        "_ansible_diff": diff,
        "_ansible_tmpdir": str(module_tmp),
    }
    capsys.readouterr()
    with patch_module_args({**args, **internal}), pytest.raises(SystemExit) as exited:
        module(name).main()
    result = json.loads(capsys.readouterr().out)
    assert bool(result.get("failed")) == (exited.value.code != 0), result
    return result


def with_fake(fake: FakeEspMirror, **args) -> dict:
    return {"executable": str(fake.path), **args}


# -- canned reports: what this esp-mirror prints on conftest's fake machines ---------------------


def plan_report(machine) -> dict:
    outcome = machine.cli("plan", "--json", *machine.args())
    assert outcome.code == 0, outcome.err
    return json.loads(outcome.out)


def apply_report(images) -> dict:
    outcome = images.cli("apply", "--yes", "--json", *images.args())
    assert outcome.code == 0, outcome.err
    return json.loads(outcome.out)


def upkeep_report(mirror, *argv: str) -> tuple[int, dict]:
    outcome = mirror.cli(*argv)
    assert outcome.err == "", outcome.err
    return outcome.code, json.loads(outcome.out)


DISKS = ["/dev/disk/by-id/ata-DISK_A", "/dev/disk/by-id/ata-DISK_B"]
IN_USE = "esp-mirror: error: /dev/sdb1 is mounted at /mnt/data: unmount it, or choose another disk\n"


# -- apply -----------------------------------------------------------------------------------------


def test_apply_runs_apply_with_each_setting_given_as_its_option(fake, images, tmp_path, capsys):
    fake.answer("apply", report=apply_report(images))
    args = with_fake(
        fake,
        disks=DISKS,
        profile="arch",
        target="/mnt/target",
        esp_size="600M",
        mountpoint="/efi",
        label="ESPMIRROR",
        array_name="boot",
        metadata="1.0",
        bootloader="efi",
        efi_image="/srv/uki.efi",
        loader_id="Linux",
        entry_label="Arch",
        no_nvram=True,
        initramfs="configure-only",
        wipe=True,
        degraded=False,
    )

    run("apply", args, tmp_path, capsys)

    assert fake.argvs == [
        [
            *("esp-mirror", "apply", "--yes", "--json"),
            *("--disk", DISKS[0], "--disk", DISKS[1], "--profile", "arch", "--target", "/mnt/target"),
            *("--esp-size", "600M", "--mountpoint", "/efi", "--label", "ESPMIRROR", "--array-name", "boot"),
            *("--metadata", "1.0", "--bootloader", "efi", "--efi-image", "/srv/uki.efi", "--loader-id", "Linux"),
            *("--entry-label", "Arch", "--no-nvram", "--initramfs", "configure-only", "--wipe"),
        ]
    ]


def test_apply_leaves_out_what_is_not_given_so_esp_mirrors_defaults_apply(fake, images, tmp_path, capsys):
    fake.answer("apply", report=apply_report(images))
    run("apply", with_fake(fake, disks=DISKS), tmp_path, capsys)
    assert fake.argvs == [["esp-mirror", "apply", "--yes", "--json", "--disk", DISKS[0], "--disk", DISKS[1]]]


def test_a_setting_without_a_command_line_option_goes_in_a_settings_file_removed_afterwards(
    fake, images, tmp_path, capsys
):
    fake.answer("apply", report=apply_report(images))
    run("apply", with_fake(fake, disks=DISKS, esp_start="2M"), tmp_path, capsys)
    [call] = fake.runs
    assert call["argv"][1:-2] == ["apply", "--yes", "--json", "--disk", DISKS[0], "--disk", DISKS[1]]
    assert call["argv"][-2] == "--config" and call["argv"][-1].endswith(".yaml")
    assert yaml.safe_load(call["config"]) == {"esp_start": "2M"}  # esp-mirror reads it as YAML
    assert not os.path.exists(call["argv"][-1])


def test_apply_reports_changed_when_a_step_changed_and_returns_the_plan_and_its_progress(
    fake, images, tmp_path, capsys
):
    report = apply_report(images)
    fake.answer("apply", report=report)

    result = run("apply", with_fake(fake, disks=DISKS), tmp_path, capsys)

    assert report["changed"] > 0 and result["changed"] is True
    assert (result["plan"], result["digest"], result["report"]) == (report["groups"], report["digest"], report)
    assert (result["would_change"], result["undecided"]) == (report["would_change"], report["undecided"])
    assert result["stdout_lines"] == report["log"] and result["rc"] == 0
    assert result["cmd"][1:4] == ["apply", "--yes", "--json"]
    assert "diff" not in result


def test_apply_that_changed_no_step_reports_unchanged(fake, images, tmp_path, capsys):
    report = apply_report(images)
    fake.answer("apply", report={**report, "changed": 0})
    assert run("apply", with_fake(fake, disks=DISKS), tmp_path, capsys)["changed"] is False


def test_check_mode_runs_plan_only_and_says_whether_apply_would_change(fake, two_disks, tmp_path, capsys):
    plan = plan_report(two_disks)
    fake.answer("plan", report=plan)

    result = run("apply", with_fake(fake, disks=DISKS, bootloader="grub"), tmp_path, capsys, check=True)

    assert fake.argvs == [
        ["esp-mirror", "plan", "--json", "--disk", DISKS[0], "--disk", DISKS[1], "--bootloader", "grub"]
    ]
    assert plan["would_change"] > 0 and result["changed"] is True
    assert (result["plan"], result["report"]) == (plan["groups"], plan)
    assert result["stdout_lines"] == plan["text"].splitlines()


def test_check_mode_with_nothing_to_do_is_unchanged_and_an_undecided_step_counts(fake, images, tmp_path, capsys):
    plan = plan_report(images)
    assert plan["undecided"] > 0  # the loop devices of the image files
    fake.answer("plan", report={**plan, "would_change": 0, "undecided": 0})
    assert run("apply", with_fake(fake, disks=DISKS), tmp_path, capsys, check=True)["changed"] is False
    fake.answer("plan", report={**plan, "would_change": 0})
    assert run("apply", with_fake(fake, disks=DISKS), tmp_path, capsys, check=True)["changed"] is True
    assert [argv[1] for argv in fake.argvs] == ["plan", "plan"]  # never apply


def test_diff_mode_shows_the_plan_text(fake, images, tmp_path, capsys):
    plan = plan_report(images)
    fake.answer("plan", report=plan)
    fake.answer("apply", report=apply_report(images))
    checked = run("apply", with_fake(fake, disks=DISKS), tmp_path, capsys, check=True, diff=True)
    applied = run("apply", with_fake(fake, disks=DISKS), tmp_path, capsys, diff=True)
    assert checked["diff"] == {
        "before": "",
        "after": plan["text"],
        "before_header": "(nothing)",
        "after_header": "esp-mirror plan",
    }
    assert applied["diff"]["after"] == applied["report"]["text"]


def test_bad_input_fails_the_task_with_esp_mirrors_error_line_unchanged(fake, tmp_path, capsys):
    fake.answer("apply", 2, stderr=IN_USE)
    fake.answer("plan", 2, stderr=IN_USE)
    for check in (False, True):
        result = run("apply", with_fake(fake, disks=DISKS), tmp_path, capsys, check=check)
        assert result["failed"] is True and result["msg"] == IN_USE.rstrip("\n")
        assert (result["rc"], result["stderr"]) == (2, IN_USE)
    assert [argv[1] for argv in fake.argvs] == ["apply", "plan"]


def test_a_failed_step_fails_the_task_with_esp_mirrors_whole_message(fake, tmp_path, capsys):
    stderr = (
        "esp-mirror: error: [post_format] step failed: mkfs.vfat -F 32 /dev/md/esp\n"
        "`mkfs.vfat -F 32 /dev/md/esp` exited with 1: mkfs.fat: unable to open /dev/md/esp\n"
        "Nothing after this step was done. Fix the cause and run the same `esp-mirror apply` again: "
        "it continues from here.\n"
    )
    fake.answer("apply", 1, stderr=stderr)
    result = run("apply", with_fake(fake, disks=DISKS), tmp_path, capsys)
    assert (result["failed"], result["msg"], result["rc"]) == (True, stderr.rstrip("\n"), 1)


def test_output_that_is_no_report_fails_the_task_saying_so(fake, tmp_path, capsys):
    fake.answers["apply"] = {"rc": 0, "stdout": "esp-mirror apply: done in 3.1 s\n", "stderr": ""}
    (fake.dir / "answers.json").write_text(json.dumps(fake.answers))
    result = run("apply", with_fake(fake, disks=DISKS), tmp_path, capsys)
    assert result["failed"] is True
    assert result["msg"].startswith(
        f"{fake.path} apply --yes --json --disk {DISKS[0]} --disk {DISKS[1]} printed no JSON report"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"disks": DISKS, "colour": "red"}, "Unsupported parameters for (esp_mirror.mirror.apply) module: colour."),
        ({"disks": DISKS, "wipe": "maybe"}, "argument 'wipe' is of type str and we were unable to convert to bool"),
        (
            {"disks": DISKS, "bootloader": "lilo"},
            "value of bootloader must be one of: efi, zfsbootmenu, systemd-boot, grub",
        ),
        ({"profile": "debian"}, "missing required arguments: disks"),
        (
            {"disks": ["disk-a.img", "/dev/sdb"]},
            "give absolute paths (the module runs in a temporary directory): disks: disk-a.img",
        ),
    ],
    ids=["unknown-option", "not-a-bool", "not-a-choice", "no-disks", "relative-path"],
)
def test_bad_arguments_are_refused_before_esp_mirror_runs(fake, tmp_path, capsys, args, message):
    result = run("apply", with_fake(fake, **args), tmp_path, capsys)
    assert result["failed"] is True and message in result["msg"], result["msg"]
    assert fake.runs == []


def test_esp_mirror_is_found_on_path_when_no_executable_is_given(fake, images, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(fake.dir))
    fake.answer("apply", report=apply_report(images))
    result = run("apply", {"disks": DISKS}, tmp_path, capsys)
    assert result["cmd"][0] == str(fake.path) and len(fake.runs) == 1


def test_no_esp_mirror_anywhere_fails_the_task_naming_it(tmp_path, capsys, monkeypatch):
    if any(os.path.exists(f"{d}/esp-mirror") for d in ("/sbin", "/usr/sbin", "/usr/local/sbin")):
        pytest.skip("this machine has an installed esp-mirror, which Ansible finds in the sbin directories")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = run("apply", {"disks": DISKS}, tmp_path, capsys)
    assert result["failed"] is True and "esp-mirror" in result["msg"]


# -- apply's options are esp-mirror's settings table -------------------------------------------------


ANSIBLE_TYPE = {
    Kind.TEXT: "str",
    Kind.PATH: "path",
    Kind.PATHS: "list",
    Kind.SIZE: "str",
    Kind.CHOICE: "str",
    Kind.FLAG: "bool",
}
NOT_SETTINGS = {"executable"}


def test_apply_has_one_option_per_setting_with_the_settings_type_choices_and_default():
    spec = module("apply").ARGUMENT_SPEC
    table = settings()
    assert set(spec) - NOT_SETTINGS == set(table)
    for name, setting in table.items():
        option = spec[name]
        assert option["type"] == ANSIBLE_TYPE[setting.kind], name
        assert option.get("elements") == ("path" if setting.kind is Kind.PATHS else None), name
        assert option.get("choices") == (list(choices(name)) if setting.kind is Kind.CHOICE else None), name
        assert option.get("required", False) is (name == "disks"), name
        # left out, esp-mirror's own default applies; a flag's default is the table's (false)
        assert option.get("default") == (default_of(name) if setting.kind is Kind.FLAG else None), name


def test_apply_spells_each_setting_as_the_command_line_does():
    spelled = dict(module("apply").SETTINGS)
    assert list(spelled) == list(settings())  # the table's order, so argv reads like the CLI's --help
    for name, setting in settings().items():
        expected = None if setting.option is None else setting.option or f"--{name.replace('_', '-')}"
        assert spelled[name] == expected, name


def shown_default(name: str) -> str | None:
    """The default as --help shows it (cli.install_options), sizes in MiB; None for no default."""
    setting, value = settings()[name], default_of(name)
    if setting.shown_default:
        return setting.shown_default
    if value in ((), None, False):
        return None
    if setting.kind is Kind.SIZE:
        return f"{value // MIB}M"
    return str(getattr(value, "value", value))


def test_apply_documents_the_choices_of_each_setting_as_the_table_has_them():
    """DOCUMENTATION's choices (ansible-doc, the collection's docs) are the Request's, e.g. the
    bootloader kinds of esp_mirror_plugin/pipeline/bootloaders.py; ARGUMENT_SPEC's are checked above."""
    options = yaml.safe_load(module("apply").DOCUMENTATION)["options"]
    for name, setting in settings().items():
        expected = list(choices(name)) if setting.kind is Kind.CHOICE else None
        assert options[name].get("choices") == expected, name


def test_apply_documents_each_setting_with_its_help_and_default():
    options = yaml.safe_load(module("apply").DOCUMENTATION)["options"]
    for name, setting in settings().items():
        description = options[name]["description"]
        assert description[0] == setting.help, name
        default = shown_default(name)
        if default is not None and setting.kind is not Kind.FLAG:
            assert description[1] == f"esp-mirror's default when left out: {default}", name


# -- info ------------------------------------------------------------------------------------------


def test_info_returns_the_status_report_as_facts_and_changes_nothing(fake, mirror, tmp_path, capsys):
    code, status = upkeep_report(mirror, "status", "--json")
    assert code == 0
    fake.answer("status", code, report=status)

    result = run("info", with_fake(fake), tmp_path, capsys)

    assert fake.argvs == [["esp-mirror", "status", "--json"]]
    facts = {**status, "healthy": True, "last_check": status.get("last_check")}
    assert result["ansible_facts"] == {"esp_mirror": facts} and result["status"] == facts
    assert result["changed"] is False
    assert "rc" not in result  # Ansible fails a task whose result has a non-zero rc: status's is exit_code


def test_a_degraded_mirror_is_a_fact_not_a_failure(fake, mirror, tmp_path, capsys):
    mirror.lose_disk("vdb")
    code, status = upkeep_report(mirror, "status", "--json")
    assert code == 1 and status["problems"]
    fake.answer("status", code, report=status)

    result = run("info", with_fake(fake), tmp_path, capsys, check=True)

    assert "failed" not in result and result["changed"] is False
    facts = result["ansible_facts"]["esp_mirror"]
    assert (facts["healthy"], facts["problems"], facts["exit_code"]) == (False, status["problems"], 1)


def test_a_machine_without_a_mirror_is_a_fact_too(fake, mirror, tmp_path, capsys):
    _, status = upkeep_report(mirror, "status", "--json")
    fake.answer("status", 2, report={**status, "setup": False, "exit_code": 2, "array": None})
    facts = run("info", with_fake(fake), tmp_path, capsys)["ansible_facts"]["esp_mirror"]
    assert (facts["setup"], facts["healthy"]) == (False, False)


def test_the_last_check_is_passed_on_when_status_reports_it(fake, mirror, tmp_path, capsys):
    _, status = upkeep_report(mirror, "status", "--json")
    last_check = {"at": "2026-11-29T03:00:00Z", "mismatch_cnt": 0, "differences": 0}
    fake.answer("status", 0, report={**status, "last_check": last_check})
    facts = run("info", with_fake(fake), tmp_path, capsys)["ansible_facts"]["esp_mirror"]
    assert facts["last_check"] == last_check


def test_info_fails_only_on_an_esp_mirror_error_with_its_line(fake, tmp_path, capsys):
    line = "esp-mirror: error: status reads md and EFI state and must run as root: run it with sudo\n"
    fake.answer("status", 2, stderr=line)
    result = run("info", with_fake(fake), tmp_path, capsys)
    assert (result["failed"], result["msg"], result["rc"]) == (True, line.rstrip("\n"), 2)


def test_an_internal_error_of_esp_mirror_fails_the_task_with_its_line(fake, tmp_path, capsys):
    line = (
        "esp-mirror: internal error: KeyError: 'md' (this is a bug; run again with --debug for the traceback "
        "and report it)\n"
    )
    fake.answer("status", 70, stderr=line)
    fake.answer("apply", 70, stderr=line)
    for name, args in (("info", {}), ("apply", {"disks": DISKS})):
        result = run(name, with_fake(fake, **args), tmp_path, capsys)
        assert (result["failed"], result["msg"], result["rc"]) == (True, line.rstrip("\n"), 70)


def test_an_exit_code_without_a_message_is_said_in_esp_mirrors_words(fake, tmp_path, capsys):
    fake.answer("apply", 130)
    result = run("apply", with_fake(fake, disks=DISKS), tmp_path, capsys)
    assert result["failed"] is True and result["msg"].endswith(
        " exited with 130 (interrupted (Ctrl-C): run the same command again, it continues from where it stopped) "
        "and printed nothing on stderr"
    )


def test_the_modules_know_esp_mirrors_exit_codes_as_esp_mirror_says_them():
    """The modules cannot import esp_mirror_plugin (they run on the managed host): their copy of
    the exit codes is held to esp-mirror's here."""
    runner = importlib.import_module("ansible_collections.esp_mirror.mirror.plugins.module_utils.runner")
    assert {int(code): meaning for code, meaning in MEANINGS.items()} == runner.EXIT_CODES
    assert tuple(ExitCode) == (
        runner.DONE,
        runner.PROBLEMS,
        runner.BAD_INPUT,
        runner.INTERNAL_ERROR,
        runner.INTERRUPTED,
    )
    info = module("info")
    assert (info.HEALTHY, info.PROBLEMS, info.NOT_SET_UP) == (0, 1, 2)


# -- member ----------------------------------------------------------------------------------------


@pytest.fixture
def added(mirror, monkeypatch):
    """A mirror on vda and vdb with a blank vdc: add's dry run, and add carried out."""
    mirror.add_new_disk("vdc")
    mirror.accept_changes()
    fast_applier(mirror, monkeypatch)
    planned = upkeep_report(mirror, "add", "--disk", "/dev/vdc", "--dry-run", "--json")[1]
    applied = upkeep_report(mirror, "add", "--disk", "/dev/vdc", "--yes", "--json")[1]
    return planned, applied


def test_replace_runs_a_dry_run_then_replace(fake, added, tmp_path, capsys):
    planned, applied = added
    fake.answer("replace --dry-run", report=planned)
    fake.answer("replace", report=applied)

    result = run("member", with_fake(fake, state="replaced", old="missing", new="/dev/sdc"), tmp_path, capsys)

    replace = ["esp-mirror", "replace", "--old", "missing", "--new", "/dev/sdc"]
    assert fake.argvs == [[*replace, "--dry-run", "--json"], [*replace, "--yes", "--json"]]
    assert applied["changed"] > 0 and result["changed"] is True
    assert (result["plan"], result["report"], result["cmd"][-2:]) == (applied["plan"], applied, ["--yes", "--json"])


def test_add_with_wipe_runs_add_with_wipe(fake, added, tmp_path, capsys):
    planned, applied = added
    fake.answer("add --dry-run", report=planned)
    fake.answer("add", report=applied)

    run("member", with_fake(fake, state="added", disk="/dev/sdc", wipe=True), tmp_path, capsys)

    add = ["esp-mirror", "add", "--disk", "/dev/sdc", "--wipe"]
    assert fake.argvs == [[*add, "--dry-run", "--json"], [*add, "--yes", "--json"]]


def test_member_check_mode_runs_only_the_dry_run(fake, added, tmp_path, capsys):
    planned, _ = added
    assert planned["would_change"] > 0
    fake.answer("add --dry-run", report=planned)

    result = run("member", with_fake(fake, state="added", disk="/dev/sdc"), tmp_path, capsys, check=True)

    assert fake.argvs == [["esp-mirror", "add", "--disk", "/dev/sdc", "--dry-run", "--json"]]
    assert (result["changed"], result["plan"], result["report"]) == (True, planned["plan"], planned)


def test_a_disk_that_is_an_in_sync_member_already_is_unchanged_and_nothing_runs(fake, mirror, tmp_path, capsys):
    code, planned = upkeep_report(mirror, "add", "--disk", "/dev/vda", "--dry-run", "--json")
    assert code == 0 and (planned["would_change"], planned["undecided"]) == (0, 0)
    fake.answer("add --dry-run", report=planned)
    fake.answer("replace --dry-run", report=planned)

    added = run("member", with_fake(fake, state="added", disk="/dev/vda"), tmp_path, capsys)
    replaced = run("member", with_fake(fake, state="replaced", old="missing", new="/dev/vda"), tmp_path, capsys)

    assert (added["changed"], replaced["changed"]) == (False, False)
    assert [argv[-2:] for argv in fake.argvs] == [["--dry-run", "--json"]] * 2


def test_a_refused_member_change_fails_with_the_error_line_and_runs_nothing_else(fake, tmp_path, capsys):
    line = "esp-mirror: error: /dev/sdc is smaller than the members (1 GiB): use a disk of at least 1 GiB\n"
    fake.answer("add --dry-run", 2, stderr=line)
    result = run("member", with_fake(fake, state="added", disk="/dev/sdc"), tmp_path, capsys)
    assert (result["failed"], result["msg"], result["rc"]) == (True, line.rstrip("\n"), 2)
    assert len(fake.runs) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"state": "replaced", "old": "missing"}, "state is replaced but all of the following are missing: new"),
        ({"state": "added"}, "state is added but all of the following are missing: disk"),
        ({"state": "added", "disk": "/dev/sdc", "old": "/dev/sda"}, "parameters are mutually exclusive: disk|old"),
        ({"state": "present", "disk": "/dev/sdc"}, "value of state must be one of: replaced, added"),
    ],
    ids=["replace-without-new", "add-without-disk", "disk-and-old", "unknown-state"],
)
def test_member_arguments_are_checked_before_esp_mirror_runs(fake, tmp_path, capsys, args, message):
    result = run("member", with_fake(fake, **args), tmp_path, capsys)
    assert result["failed"] is True and message in result["msg"], result["msg"]
    assert fake.runs == []


def test_arguments_reach_esp_mirror_as_given_without_a_shell(fake, images, tmp_path, capsys):
    fake.answer("apply", report=apply_report(images))
    run("apply", with_fake(fake, disks=["/srv/build/disk a.img", "/srv/build/$(reboot).img"]), tmp_path, capsys)
    assert fake.argvs[0][-4:] == ["--disk", "/srv/build/disk a.img", "--disk", "/srv/build/$(reboot).img"]
