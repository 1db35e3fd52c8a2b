"""The Ansible collection and the metrics on real firmware: one playbook in one guest.

``ansible-playbook`` (the test venv's, local connection inside the guest) runs the collection's
modules against two blank disks: check mode first (the disks hash the same afterwards), apply,
apply again (``changed: false``), info (two active members), then disk B fails (md fails and
removes its member, as when a disk dies) and the member module replaces the missing member with a
third disk (and again: ``changed: false``); the weekly check's
command writes the metrics file, status exits 0.
Then the firmware boots each remaining disk alone through its own entry.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ci.measure import measurements
from ci.scenarios import boot_alone, disk_serial, entry_label, partition_uuid
from ci.vm import Assets, blank_disk, fresh_vars, run_in_guest
from ci.vm.initrd import GUEST_WORK_DIR
from ci.vm.scripts import REPO_ROOT
from esp_mirror_plugin.system import zipapp

pytestmark = pytest.mark.vm
BIN = Path(sys.executable).parent
METRICS_DIR = "/var/lib/prometheus/node-exporter"


def playbook(cli: str, efi_image: str) -> list[dict]:
    """The play, one task per step (under TCG each task costs seconds of Ansible's own work, so
    the shell does what is not the collection's: the metrics directory, the weekly check)."""
    mirror = {
        "executable": cli,
        "disks": ["/dev/vda", "/dev/vdb"],
        "profile": "debian",
        "bootloader": "efi",
        "efi_image": efi_image,
        "initramfs": "skip",
        "esp_size": "64M",
    }
    info = {"esp_mirror.mirror.info": {"executable": cli}}
    replace = {
        "esp_mirror.mirror.member": {"executable": cli, "state": "replaced", "old": "missing", "new": "/dev/vdc"}
    }
    hashes = {"command": "md5sum /dev/vda /dev/vdb", "changed_when": False}
    tasks: list[tuple[str, dict]] = [
        ("hashes before", hashes),
        ("plan", {"esp_mirror.mirror.apply": mirror, "check_mode": True}),
        ("hashes after", hashes),
        ("apply", {"esp_mirror.mirror.apply": mirror}),
        ("apply again", {"esp_mirror.mirror.apply": mirror}),
        ("info", info),
        ("fail B", {"command": "mdadm /dev/md/esp --fail /dev/vdb1 --remove /dev/vdb1"}),
        ("replace", replace),
        ("replace again", replace),
        ("info at the end", info),
    ]
    return [
        {
            "name": "fleet",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "tasks": [{"name": name, **task} for name, task in tasks],
        }
    ]


TASK = re.compile(r"^TASK \[(.+)\] \**$")
RESULT = re.compile(r"^(?:ok|changed|failed|fatal): \[localhost\]:? (?:FAILED! )?=> (\{.*\})$")


def results(output: str) -> dict[str, dict]:
    """Task name -> its result, from ansible-playbook -v's one-line JSON results."""
    found, task = {}, None
    for line in output.splitlines():
        if m := TASK.match(line):
            task = m.group(1)
        elif (m := RESULT.match(line)) and task is not None:
            found[task] = json.loads(m.group(1))
    return found


@dataclass(frozen=True)
class Fleet:
    tasks: dict[str, dict]  # task name -> its result on localhost
    seconds: dict[str, float]  # task name -> how long it took
    total: float  # the whole ansible-playbook run
    codes: dict[str, str]  # exit codes after the play: the weekly check ("check"), status ("status")
    metrics: str  # the file the weekly check wrote
    disks: list[Path]
    nvram: Path
    work: Path


@pytest.fixture(scope="module")
def fleet(vm_assets: Assets, payload_efi: Path, module_dir: Path) -> Fleet:
    work = module_dir
    disks = [blank_disk(work / f"disk-{n}.img", 100) for n in "abc"]  # small: the play hashes them
    nvram = fresh_vars(work / "vars.fd", vm_assets)
    cli = work / "esp-mirror"  # the zip application apply installs: what a managed host runs
    cli.write_bytes(zipapp.build().data)
    cli.chmod(0o755)
    book = work / "playbook.yml"
    book.write_text(yaml.safe_dump(playbook(str(cli), str(payload_efi)), sort_keys=False))
    env = {
        "ANSIBLE_COLLECTIONS_PATH": str(REPO_ROOT / "ansible"),
        "ANSIBLE_CALLBACKS_ENABLED": "ansible.builtin.junit",  # each task's time
        "JUNIT_OUTPUT_DIR": f"{GUEST_WORK_DIR}/junit",
        "JUNIT_HIDE_TASK_ARGUMENTS": "true",
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",  # with -v: each result as one line of JSON
        "ANSIBLE_CALLBACK_FORMAT_PRETTY": "false",
        "ANSIBLE_PIPELINING": "true",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{BIN}:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
    }
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    weekly = f"{cli} check --no-md-check --metrics-dir {METRICS_DIR}"  # what Debian's timer runs
    script = (
        f"set -u\n{exports}cd /tmp\nmkdir -p {METRICS_DIR}\nstart=$(date +%s%N)\n"
        f"{shlex.quote(str(BIN / 'ansible-playbook'))} -v -i localhost, {shlex.quote(str(book))} "
        f"> {GUEST_WORK_DIR}/playbook.out 2>&1\n"
        f'echo "playbook=$? ms=$(( ($(date +%s%N) - start) / 1000000 ))"\n'
        f'{weekly} > /dev/null 2>&1; echo "check=$?"\n'
        f"cp {METRICS_DIR}/esp_mirror.prom {GUEST_WORK_DIR}/\n"
        f'{cli} status > /dev/null 2>&1; echo "status=$?"\n'
        "umount /boot/efi && mdadm --stop /dev/md/esp >&2\n"
    )
    guest = run_in_guest(script, disks, nvram, timeout=1500, assets=vm_assets, log_dir=work)
    share = guest.serial_log.parent / "share"
    output = (share / "playbook.out").read_text() if (share / "playbook.out").exists() else ""
    assert guest.rc == 0, f"{guest.stdout}\n{guest.stderr}\n{output}"
    codes = dict(field.split("=") for field in guest.stdout.split() if "=" in field)
    assert codes["playbook"] == "0", output
    [junit] = (share / "junit").glob("*.xml")
    times = {
        case.get("name", "").split(": ", 1)[1]: float(case.get("time", "0"))
        for case in ElementTree.parse(junit).iter("testcase")
    }
    metrics = (share / "esp_mirror.prom").read_text() if (share / "esp_mirror.prom").exists() else ""
    return Fleet(results(output), times, int(codes["ms"]) / 1000, codes, metrics, disks, nvram, work)


def test_the_playbook_applies_idempotently_and_check_mode_changes_nothing(fleet: Fleet, request) -> None:
    t = fleet.tasks
    for name in ("plan", "apply", "apply again", "info", "replace", "replace again"):
        measurements(request.config).record("fleet", f"ansible task: {name}", fleet.seconds[name])
    measurements(request.config).record("fleet", "ansible-playbook, the whole play", fleet.total)
    print(f"playbook {fleet.total:.1f} s; tasks: " + ", ".join(f"{n} {s:.1f} s" for n, s in fleet.seconds.items()))
    # check mode on blank disks: apply would change them, and nothing was changed
    assert t["plan"]["changed"] is True and not t["plan"].get("failed"), t["plan"]
    assert t["hashes before"]["stdout"] == t["hashes after"]["stdout"]
    assert t["apply"]["changed"] is True and t["apply"]["report"]["changed"] > 0, t["apply"]
    assert t["apply again"]["changed"] is False, t["apply again"]["report"]["steps"]


def test_info_reports_two_active_members(fleet: Fleet) -> None:
    facts = fleet.tasks["info"]["ansible_facts"]["esp_mirror"]
    assert facts["healthy"] is True and fleet.tasks["info"]["changed"] is False
    assert [m["state"] for m in facts["array"]["members"]] == ["in_sync", "in_sync"]


def test_the_member_module_replaces_the_failed_member_once(fleet: Fleet) -> None:
    t = fleet.tasks
    assert t["replace"]["changed"] is True, t["replace"]
    assert t["replace again"]["changed"] is False, t["replace again"]
    assert fleet.codes["status"] == "0"
    last = t["info at the end"]["ansible_facts"]["esp_mirror"]
    assert sorted(m["node"] for m in last["array"]["members"]) == ["/dev/vda1", "/dev/vdc1"]
    # one entry per member, and none left for the disk that died
    assert sorted(e["disk"] for e in last["entries"] if e["entry"]) == ["/dev/vda", "/dev/vdc"], last["entries"]
    assert (last["healthy"], last["exit_code"]) == (True, 0)


def test_the_weekly_check_writes_the_metrics_for_node_exporter(fleet: Fleet) -> None:
    assert fleet.codes["check"] == "0"
    values = {
        (s.name, s.labels.get("member", "")): s.value
        for family in text_string_to_metric_families(fleet.metrics)
        for s in family.samples
    }
    assert values[("esp_mirror_members_active", "")] == 2
    assert values[("esp_mirror_members_missing", "")] == 0
    assert values[("esp_mirror_last_check_success", "")] == 1
    assert values[("esp_mirror_files_differing", "")] == 0
    assert values[("esp_mirror_boot_entry_missing", "/dev/vda1")] == 0
    assert values[("esp_mirror_boot_entry_missing", "/dev/vdc1")] == 0


@pytest.mark.parametrize("index", [0, 2], ids=["disk-A-alone", "disk-C-alone"])
def test_each_remaining_disk_boots_alone(fleet: Fleet, vm_assets: Assets, index: int) -> None:
    disk = fleet.disks[index]
    boot = boot_alone(disk, fleet.nvram, fleet.work, f"alone-{index}", vm_assets)
    assert boot.boot_entry_description == entry_label(disk_serial(index)), boot.serial_log
    assert boot.loader_device_partuuid == partition_uuid(disk)
