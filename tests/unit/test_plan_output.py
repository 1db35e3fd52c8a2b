"""`plan` and `plan --json` show the same steps, and planning never changes anything."""

from __future__ import annotations

import json
import shlex

import pytest
from conftest import BOOTLOADERS, PROFILES, assert_only_read

from esp_mirror_plugin.pipeline.bootloaders import BootloaderKind, spec

FIRST_LINE = {
    "write-file": lambda s: (
        f"write {s['path']} (mode {s['mode']}{', ' + s['encoding'].upper() if 'encoding' in s else ''}):"
    ),
    "edit-block": lambda s: f"edit {s['path']}: managed block",
    "copy-file": lambda s: f"copy {s['source']} -> {s['dest']}",
    "mkdir": lambda s: f"mkdir -p {shlex.quote(s['path'])}",
    "settle": lambda s: f"udevadm settle --timeout={s['timeout']} (where udev runs)",
    "wait-for-sync": lambda s: (
        f"wait for {s['device']} to finish {s['work']} (progress shown; mdadm --readwrite if read-auto)"
    ),
    "attach-image": lambda s: (
        f"losetup --list --associated {s['image']} || losetup --find --show --partscan {s['image']}"
        f"   # -> ${s['binds']}"
    ),
    "ensure-fat": lambda s: (
        f"fsck.fat -n {s['device']}; when it finds damage and the FAT holds no files: {shlex.join(s['make']['argv'])}"
    ),
    "load-debconf": lambda s: f"{shlex.join(s['load']['argv'])}   (unless {s['database']} holds these answers already)",
    "uuid-link": lambda s: (
        f"ln -s DEVICE /dev/disk/by-uuid/UUID for the file system mounted at {shlex.quote(s['mountpoint'])} "
        "(blkid gives UUID), unless udev made it"
    ),
    "install-program": lambda s: (
        f"install {s['path']} (mode {s['mode']}): {s['summary']}; {s['size']} bytes, sha256 {s['sha256']}"
    ),
}


def text_steps(text: str) -> list[tuple[str, str, str]]:
    """(group, why, first line of the step) from the text plan."""
    steps, group, why = [], None, None
    for line in text.splitlines():
        if line.startswith("# == "):
            group = line[5:-3]
        elif line.startswith(("# note: ", "    | ")) or not line:
            continue
        elif line.startswith("# ") and group:
            why = line[2:]
        elif group:
            steps.append((group, why, line))
    return steps


def json_steps(plan: dict) -> list[tuple[str, str, object]]:
    return [(g["name"], s["why"], s) for g in plan["groups"] for s in g["steps"]]


def unquote_vars(argv: list[str]) -> list[str]:
    return [a[1:-1] if a.startswith('"${') else a for a in argv]


@pytest.mark.parametrize("kind", BOOTLOADERS)
@pytest.mark.parametrize("profile", ["debian", "arch"])
def test_text_and_json_plans_have_the_same_steps(two_disks, efi_image, profile, kind):
    extra = ["--profile", profile, "--bootloader", kind]
    extra += ["--efi-image", str(efi_image)] if spec(BootloaderKind(kind)).needs_image else []
    text = two_disks.cli("plan", *two_disks.args(), *extra)
    raw = two_disks.cli("plan", "--json", *two_disks.args(), *extra)
    assert (text.code, raw.code) == (0, 0)
    plan = json.loads(raw.out)
    from_text, from_json = text_steps(text.out), json_steps(plan)
    assert [(g, why) for g, why, _ in from_text] == [(g, why) for g, why, _ in from_json]
    for (_, _, line), (_, _, step) in zip(from_text, from_json, strict=False):
        if step["kind"] == "command":
            words = shlex.split(line)
            env = [f"{k}={v}" for k, v in step["env"].items()]
            assert words == env + unquote_vars(step["argv"])
        elif step["kind"] == "wait-for-partition":
            assert line.startswith(f"wait for {step['node']} (partx --add --nr {step['number']} {step['disk']} ")
        else:
            assert line == FIRST_LINE[step["kind"]](step)


def test_json_plan_describes_the_layout(two_disks):
    plan = json.loads(two_disks.cli("plan", "--json", *two_disks.args()).out)
    assert plan["profile"] == "debian" and plan["nvram"] is True
    assert plan["request"]["disks"] == ["/dev/sda", "/dev/sdb"] and plan["request"]["metadata"] == "1.0"
    assert plan["request"]["bootloader"] == "grub" and plan["request"]["mountpoint"] == "/boot/efi"
    assert plan["array"]["device"] == "/dev/md/esp" and plan["array"]["action"] == "create"
    assert plan["filesystem"]["mkfs"] is True
    assert [m["disk"] for m in plan["members"]] == ["/dev/sda", "/dev/sdb"]
    assert [m["exists"] for m in plan["members"]] == [False, False]


def test_json_plan_of_image_files_renders_loop_variables(machine):
    machine.add_image("a.img")
    machine.add_image("b.img")
    plan = json.loads(machine.cli("plan", "--json", *machine.args()).out)
    setup = next(g for g in plan["groups"] if g["name"] == "setup")
    assert setup["steps"][0] == {
        "kind": "attach-image",
        "image": "/images/a.img",
        "binds": "LOOP_1",
        "why": "loop device for the image /images/a.img",
        "would_change": None,  # told by its own probe (losetup --list) while apply runs
    }
    wait = next(s for g in plan["groups"] for s in g["steps"] if s["kind"] == "wait-for-partition")
    assert (wait["disk"], wait["node"]) == ('"${LOOP_1}"', '"${LOOP_1}p1"')
    notes = next(g for g in plan["groups"] if g["name"] == "notes")["notes"]
    assert notes == [
        "image files are not this machine's disks: no firmware boot entries are made (--no-nvram); "
        "the firmware boots them via the \\EFI\\BOOT\\ fallback path"
    ]


@pytest.mark.parametrize("kind", BOOTLOADERS)
@pytest.mark.parametrize("profile", PROFILES)
def test_plan_only_reads_and_writes_nothing(two_disks, efi_image, profile, kind):
    before = two_disks.target_state()
    extra = ["--efi-image", str(efi_image)] if spec(BootloaderKind(kind)).needs_image else []
    outcome = two_disks.cli("plan", *two_disks.args(), "--profile", profile, "--bootloader", kind, *extra)
    assert outcome.code == 0, outcome.err
    assert_only_read(outcome.calls)
    assert two_disks.target_state() == before


def test_plan_on_disks_with_partition_tables_only_reads_and_writes_nothing(machine):
    """Blank disks need no sfdisk; here every probe runs: an empty GPT (sda) and a DOS table with a
    partition (sdb, --wipe), so the read-only check above also sees sfdisk and the partition probes."""
    machine.add_disk("sda", pttype="gpt")
    sdb = machine.add_disk("sdb", pttype="dos")
    machine.add_partition(sdb, 1, 2048, 2097152)
    machine.set_efivars(efibootmgr="BootCurrent: 0000\nBootOrder: 0000\nBoot0000* UiApp\tFvVol(x)/FvFile(y)\n")
    before = machine.target_state()
    outcome = machine.cli("plan", *machine.args(), "--wipe")
    assert outcome.code == 0, outcome.err
    assert_only_read(outcome.calls)
    assert {
        ("sfdisk", "--json", "/dev/sda"),
        ("sfdisk", "--json", "/dev/sdb"),
        ("blkid", "-p", "-o", "export", "-O", str(2048 * 512), "-S", str(2097152 * 512), "/dev/sdb"),
        ("efibootmgr", "-v"),
    } <= set(outcome.calls)
    assert machine.target_state() == before
