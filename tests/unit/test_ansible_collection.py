"""The Ansible collection esp_mirror.mirror as a collection: ansible-test's sanity checks that run
without downloads, its documentation as ansible-doc reads it, each module's argument spec against
its documentation (what ansible-test's validate-modules compares), the examples, the build, and a
playbook on localhost through Ansible itself.

``ansible-test sanity`` runs each test in a virtual environment of its own, and installs the
requirements of validate-modules, yamllint, ansible-doc, import, pep8, pylint and
runtime-metadata there with pip, which it bootstraps from a download (ci-files.testing.ansible.com);
those run by hand (docs/testing.md, "Ansible"), not here. The checks here stand in for what they cover.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from unittest import mock

import pytest
import yaml

pytest.importorskip("ansible")
from ansible.module_utils import basic
from ansible.release import __version__ as ANSIBLE_VERSION
from packaging.specifiers import SpecifierSet

REPO_ROOT = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO_ROOT / "ansible"
COLLECTION = COLLECTIONS / "ansible_collections/esp_mirror/mirror"
MODULES = ("apply", "info", "member")
BIN = Path(sys.executable).parent  # ansible-core's programs, next to this Python
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
# ansible-test sanity tests that have no requirements to install (no pip in their environment)
OFFLINE_SANITY = (
    "action-plugin-docs",
    "compile",
    "empty-init",
    "ignores",
    "line-endings",
    "no-assert",
    "no-get-exception",
    "no-illegal-filenames",
    "no-smart-quotes",
    "replace-urlopen",
    "shebang",
    "symlinks",
    "use-argspec-type-path",
    "use-compat-six",
)

pytestmark = pytest.mark.real_processes  # ansible-test, ansible-doc, ansible-galaxy, ansible-playbook


def ansible_env(home: Path) -> dict[str, str]:
    """Ansible's programs with a home of the test's own (its caches and temporary files go there)."""
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    return {
        **env,
        "HOME": str(home),
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_REMOTE_TEMP": str(home / "remote-tmp"),  # the managed host is this one
        "ANSIBLE_NOCOLOR": "1",
    }


def copy_collection(where: Path) -> Path:
    """The collection under WHERE/ansible_collections/esp_mirror/mirror, without test output."""
    copy = where / "ansible_collections/esp_mirror/mirror"
    shutil.copytree(COLLECTION, copy, ignore=shutil.ignore_patterns("output", "__pycache__"))
    return copy


def test_ansible_test_sanity_checks_that_need_no_downloads_pass(tmp_path):
    collection = copy_collection(tmp_path)  # ansible-test writes tests/output into the collection
    tests = [arg for name in OFFLINE_SANITY for arg in ("--test", name)]
    done = subprocess.run(
        [str(BIN / "ansible-test"), "sanity", "--local", "--python", PYTHON, *tests],
        cwd=collection,
        env=ansible_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ran = [line for line in done.stdout.splitlines() if line.startswith("Running sanity test")]
    assert len(ran) == len(OFFLINE_SANITY), done.stdout


def test_ansible_doc_reads_each_modules_documentation(tmp_path):
    done = subprocess.run(
        [str(BIN / "ansible-doc"), "--json", *(f"esp_mirror.mirror.{m}" for m in MODULES)],
        env=ansible_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    docs = json.loads(done.stdout)
    for name in MODULES:
        entry = docs[f"esp_mirror.mirror.{name}"]
        assert entry["doc"]["module"] == name
        assert entry["doc"]["attributes"]["check_mode"]["support"] == "full"
        assert entry["examples"] and entry["return"], name


# -- each module's argument spec against its documentation ---------------------------------------


class Constructed(Exception):
    """AnsibleModule was constructed: what it was given (as ansible-test's validate-modules finds it)."""

    def __init__(self, kwargs: dict) -> None:
        super().__init__("AnsibleModule()")
        self.kwargs = kwargs


def constructor_arguments(name: str, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.syspath_prepend(str(COLLECTIONS))
    module = importlib.import_module(f"ansible_collections.esp_mirror.mirror.plugins.modules.{name}")

    def capture(self, **kwargs):
        raise Constructed(kwargs)

    with mock.patch.object(basic.AnsibleModule, "__init__", capture), pytest.raises(Constructed) as made:
        module.main()
    return made.value.kwargs


def documented(name: str) -> dict:
    """The module's DOCUMENTATION with the options of the collection's own fragments it extends."""
    doc = yaml.safe_load(module_text(name, "DOCUMENTATION"))
    for fragment in doc.get("extends_documentation_fragment", []):
        if fragment.startswith("esp_mirror.mirror."):
            text = fragment_text(fragment.rsplit(".", 1)[1])
            doc["options"] = {**yaml.safe_load(text)["options"], **(doc.get("options") or {})}
    return doc


def fragment_text(name: str) -> str:
    tree = ast.parse((COLLECTION / f"plugins/doc_fragments/{name}.py").read_text())
    body = next(node for node in tree.body if isinstance(node, ast.ClassDef)).body
    return next(node.value.value for node in body if isinstance(node, ast.Assign))  # type: ignore[attr-defined]


def module_text(name: str, variable: str) -> str:
    tree = ast.parse((COLLECTION / f"plugins/modules/{name}.py").read_text())
    return next(
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == variable
    )


@pytest.mark.parametrize("name", MODULES)
def test_each_option_is_documented_with_the_type_default_and_choices_it_is_given(name, monkeypatch):
    given = constructor_arguments(name, monkeypatch)
    spec, options = given["argument_spec"], documented(name)["options"]
    assert set(spec) == set(options)
    for option, arguments in spec.items():
        doc = options[option]
        assert doc["type"] == arguments["type"], option
        assert doc.get("elements") == arguments.get("elements"), option
        assert doc.get("required", False) == arguments.get("required", False), option
        assert doc.get("default") == arguments.get("default"), option
        assert doc.get("choices") == arguments.get("choices"), option
        assert doc["description"] and all(isinstance(line, str) for line in doc["description"]), option
    assert given["supports_check_mode"] is True
    named = [o for rule in given.get("required_if", []) for o in (rule[0], *rule[2])]
    named += [o for rule in given.get("mutually_exclusive", []) for o in rule]
    assert set(named) <= set(spec)


@pytest.mark.parametrize("name", MODULES)
def test_the_examples_use_documented_options_only(name, monkeypatch):
    options = constructor_arguments(name, monkeypatch)["argument_spec"]
    tasks = yaml.safe_load(module_text(name, "EXAMPLES"))
    used = [task[f"esp_mirror.mirror.{name}"] for task in tasks if f"esp_mirror.mirror.{name}" in task]
    assert used, "no example of the module itself"
    for arguments in used:
        assert set(arguments or {}) <= set(options), arguments


@pytest.mark.parametrize("name", MODULES)
def test_each_return_value_says_what_when_and_its_type(name):
    returned = yaml.safe_load(module_text(name, "RETURN"))
    for key, value in returned.items():
        assert {"description", "returned", "type"} <= set(value), key


def test_the_modules_are_python_3_8_code_as_the_oldest_python_ansible_core_2_19_runs_them_on():
    for path in sorted((COLLECTION / "plugins").rglob("*.py")):
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 8))


def test_the_collection_runs_on_this_ansible_core():
    runtime = yaml.safe_load((COLLECTION / "meta/runtime.yml").read_text())
    assert ANSIBLE_VERSION in SpecifierSet(runtime["requires_ansible"])


# -- the build -----------------------------------------------------------------------------------------


def test_ansible_galaxy_builds_the_collection(tmp_path):
    done = subprocess.run(
        [
            str(BIN / "ansible-galaxy"),
            "collection",
            "build",
            str(copy_collection(tmp_path / "src")),
            "--output-path",
            str(tmp_path),
        ],
        env=ansible_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    version = yaml.safe_load((COLLECTION / "galaxy.yml").read_text())["version"]
    with tarfile.open(tmp_path / f"esp_mirror-mirror-{version}.tar.gz") as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("MANIFEST.json"))
    assert {f"plugins/modules/{m}.py" for m in MODULES} | {
        "plugins/module_utils/runner.py",
        "meta/runtime.yml",
    } <= names
    assert (manifest["collection_info"]["namespace"], manifest["collection_info"]["name"]) == ("esp_mirror", "mirror")


# -- through Ansible: a playbook on localhost -------------------------------------------------------

FAKE = """\
#!{python}
import json, sys
argv = sys.argv[1:]
with open({calls!r}, "a") as calls:
    calls.write(json.dumps(argv) + "\\n")
answers = json.load(open({answers!r}))
answer = answers[argv[0] + (" --dry-run" if "--dry-run" in argv else "")]
sys.stdout.write(json.dumps(answer["report"]))
sys.exit(answer["rc"])
"""

PLAN = {
    "would_change": 2,
    "undecided": 0,
    "digest": "d" * 64,
    "text": "# esp-mirror plan: profile debian\n\n# == post_format ==\n# the ESP mount point\nmkdir -p /boot/efi\n",
    "groups": [
        {"name": "post_format", "notes": [], "steps": [{"kind": "mkdir", "path": "/boot/efi", "would_change": True}]}
    ],
    "unverified": [],
}
STATUS = {"setup": True, "exit_code": 1, "problems": ["/dev/md/esp is degraded: 1 of 2 members"], "last_event": None}
NOTHING_TO_DO = {
    "plan": [{"name": "add", "notes": [], "steps": []}],
    "would_change": 0,
    "undecided": 0,
    "applied": False,
}

PLAYBOOK = """\
- hosts: localhost
  gather_facts: false
  tasks:
    - name: what apply would do
      esp_mirror.mirror.apply:
        disks: [/dev/sda, /dev/sdb]
        executable: {fake}
      check_mode: true
      diff: true
      register: planned
    - esp_mirror.mirror.info:
        executable: {fake}
    - esp_mirror.mirror.member:
        state: added
        disk: /dev/sda
        executable: {fake}
      register: member
    - ansible.builtin.copy:
        dest: {results}
        content: "{{{{ {{'planned': planned, 'facts': ansible_facts.esp_mirror, 'member': member}} | to_json }}}}"
"""


def test_a_playbook_runs_the_modules_through_ansible(tmp_path):
    """AnsiballZ packs module_utils with each module; check mode, diff and facts as Ansible passes them."""
    fake, calls, answers, results = (
        tmp_path / n for n in ("esp-mirror", "calls.jsonl", "answers.json", "results.json")
    )
    fake.write_text(FAKE.format(python=sys.executable, calls=str(calls), answers=str(answers)))
    fake.chmod(0o755)
    answers.write_text(
        json.dumps(
            {
                "plan": {"rc": 0, "report": PLAN},
                "status": {"rc": 1, "report": STATUS},
                "add --dry-run": {"rc": 0, "report": NOTHING_TO_DO},
            }
        )
    )
    (tmp_path / "site.yml").write_text(PLAYBOOK.format(fake=fake, results=results))
    done = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            "--diff",
            "site.yml",
        ],
        cwd=tmp_path,
        env=ansible_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    outcome = json.loads(results.read_text())
    assert [json.loads(line) for line in calls.read_text().splitlines()] == [
        ["plan", "--json", "--disk", "/dev/sda", "--disk", "/dev/sdb"],
        ["status", "--json"],
        ["add", "--disk", "/dev/sda", "--dry-run", "--json"],
    ]
    assert outcome["planned"]["changed"] is True and outcome["planned"]["plan"] == PLAN["groups"]
    assert "+mkdir -p /boot/efi" in done.stdout  # the diff Ansible shows
    assert outcome["facts"] == {**STATUS, "healthy": False, "last_check": None}
    assert outcome["member"]["changed"] is False
