"""After install, on real firmware: status, check, repair, add, release of one disk, and entries
(replace of a missing member, then a boot from the new disk alone: tests/vm/test_fleet.py, through
the Ansible module; release --all: tests/vm/test_installed_system.py).

Each test starts from a copy of one installed pair of disks. A guest boot's root is a fresh
overlay, so each script first makes the guest look like the booted installed system
(ci.scenarios.booted_prelude: the record apply wrote, the array assembled, the ESP mounted).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from ci.scenarios import (
    booted_prelude,
    disk_serial,
    entry_label,
    install,
    outcome,
    parse_sections,
    partition_uuid,
    sections_script,
)
from ci.vm import (
    ESP_OFFSET,
    Assets,
    blank_disk,
    boot_firmware,
    fresh_vars,
    list_member,
    read_member,
    run_after_firmware_boot,
    run_in_guest,
)
from ci.vm.initrd import GUEST_WORK_DIR
from ci.vm.scripts import esp_mirror_cli
from esp_mirror_plugin.system import nvram

pytestmark = pytest.mark.vm
FW_FILE = "EFI/FW.TXT"
FW_TEXT = b"written by the firmware, behind the back of md\n"
BOTH = ["/dev/vda1", "/dev/vdb1"]


@dataclass(frozen=True)
class Installed:
    disks: list[Path]
    nvram: Path
    record: str
    work: Path
    files: Path  # the installed-system group's files (ci.scenarios.Install.installed_files)


@pytest.fixture(scope="module")
def installed(vm_assets: Assets, payload_efi: Path, module_dir: Path) -> Installed:
    work = module_dir
    disks = [blank_disk(work / f"disk-{n}.img", 1024) for n in "ab"]
    nvram = fresh_vars(work / "install-vars.fd", vm_assets)
    # a 100 MiB ESP: every check, recovery and member read here is of the whole ESP, under TCG
    result = install(disks, nvram, payload_efi, assets=vm_assets, extra=("--esp-size", "100M"), timeout=1200)
    assert result.guest.rc == 0, result.guest.stdout
    return Installed(disks, nvram, result.section("record"), work, result.installed_files)


@pytest.fixture
def system(installed: Installed, tmp_path: Path) -> Installed:
    """A private copy of the installed disks and NVRAM for one test."""
    disks = []
    for disk in installed.disks:
        subprocess.run(["cp", "--sparse=always", str(disk), str(tmp_path / disk.name)], check=True)
        disks.append(tmp_path / disk.name)
    nvram = Path(shutil.copyfile(installed.nvram, tmp_path / "vars.fd"))
    return Installed(disks, nvram, installed.record, tmp_path, installed.files)


class Outcomes(dict):
    """Section name -> Outcome, plus the host path of the guest's writable share."""

    share: Path


def run(system: Installed, disks: list[Path], parts: list[str], commands: dict[str, str], assets: Assets) -> Outcomes:
    script = "set -u\n" + booted_prelude(system.record, parts, installed_files=system.files) + sections_script(commands)
    guest = run_in_guest(script, disks, system.nvram, assets=assets, log_dir=system.work)
    assert guest.rc == 0, f"{guest.stdout}\n{guest.stderr}\nserial: {guest.serial_log}"
    out = Outcomes((name, outcome(text)) for name, text in parse_sections(guest.stdout, 1)[0].items())
    out.share = guest.serial_log.parent / "share"
    return out


def as_json(result) -> dict:
    return json.loads(result.output)


def member_files(image: Path) -> dict[str, bytes]:
    return {
        p: read_member(image, ESP_OFFSET, p)
        for p in list_member(image, ESP_OFFSET)
        if p.upper().endswith((".EFI", ".TXT"))
    }


FIRMWARE_WRITE = {
    "stop": "umount /boot/efi && mdadm --stop /dev/md/esp",
    "firmware-write": f"printf '%s\\n' {shlex.quote(FW_TEXT.decode().rstrip())} > /tmp/fw.txt && "
    f"MTOOLS_SKIP_CHECK=1 mcopy -i /dev/vdb1 /tmp/fw.txt ::/{FW_FILE}",
    "assemble": "mdadm --assemble --run /dev/md/esp /dev/vda1 /dev/vdb1 && "
    "mount -t vfat -o umask=0077 /dev/md/esp /boot/efi",
}


# choosing disk B's copy is the same path with the other member (extended only)
@pytest.mark.parametrize("source", ["a", pytest.param("b", marks=pytest.mark.extended)])
def test_a_write_to_one_member_is_found_by_check_and_repaired_from_the_chosen_source(
    system: Installed, vm_assets: Assets, source: str
) -> None:
    a_before = member_files(system.disks[0])
    out = run(
        system,
        system.disks,
        BOTH,
        {
            "status": f"{esp_mirror_cli()} status --json",
            **FIRMWARE_WRITE,
            "check-drift": f"{esp_mirror_cli()} check --json",
            "repair": f"{esp_mirror_cli()} repair --source /dev/vd{source} --backup-dir {GUEST_WORK_DIR}/backups "
            "--yes --json",
            "check-after": f"{esp_mirror_cli()} check --json",
            "fsck": "umount /boot/efi && blockdev --flushbufs /dev/vda1 /dev/vdb1 && "
            "fsck.fat -n /dev/vda1 && fsck.fat -n /dev/vdb1",
        },
        vm_assets,
    )
    assert out["status"].rc == 0, out["status"].output
    assert all(out[s].rc == 0 for s in FIRMWARE_WRITE), out
    drift = out["check-drift"]
    assert drift.rc == 1
    report = as_json(drift)
    assert report["mismatch_cnt"] > 0
    [difference] = report["differences"]
    assert difference["path"] == FW_FILE
    assert difference["members"]["/dev/vda1"] is None
    assert difference["members"]["/dev/vdb1"]["size"] == len(FW_TEXT)
    repair = out["repair"]
    assert repair.rc == 0, repair.output
    print(
        f"check with drift: {drift.seconds:.1f} s; repair from {source} (full rebuild of a 100 MiB member): "
        f"{repair.seconds:.1f} s"
    )
    assert as_json(repair)["source"] == f"/dev/vd{source}1"
    backups = [Path(b) for b in as_json(repair)["backups"]]
    if source == "a":  # B's version of the file is overwritten: it is kept in a tar, and said where
        [tar] = backups
        with tarfile.open(out.share / "backups" / tar.name) as archive:
            assert archive.extractfile(FW_FILE).read() == FW_TEXT
    else:  # A has no version of the file: nothing of A's is lost
        assert backups == []
    after = out["check-after"]
    assert (after.rc, as_json(after)["mismatch_cnt"], as_json(after)["differences"]) == (0, 0, [])
    assert out["fsck"].rc == 0, out["fsck"].output
    a_after, b_after = member_files(system.disks[0]), member_files(system.disks[1])
    assert a_after == b_after
    if source == "a":
        assert a_after == a_before and FW_FILE not in b_after
    else:
        assert a_after == {**a_before, FW_FILE: FW_TEXT}


def test_status_and_entries_in_healthy_missing_entry_and_degraded_states(system: Installed, vm_assets: Assets) -> None:
    number_of_b = f"efibootmgr | sed -n 's/^Boot\\([0-9A-F]*\\)\\* {entry_label(disk_serial(1))}$/\\1/p'"
    script = sections_script({"not-set-up": f"{esp_mirror_cli()} status --json"})
    script += booted_prelude(system.record, BOTH, installed_files=system.files)
    script += sections_script(
        {
            "healthy": f"{esp_mirror_cli()} status --json",
            "delete-ours": f"efibootmgr -q -b $({number_of_b}) -B",
            "add-theirs": "efibootmgr -q -c -d /dev/vda -p 1 -L 'Someone else' -l '\\EFI\\other\\other.efi'",
            "missing-entry": f"{esp_mirror_cli()} status --json",
            "before": "efibootmgr -v",
            "entries": f"{esp_mirror_cli()} entries --yes --json",
            "after": "efibootmgr -v",
            "entries-again": f"{esp_mirror_cli()} entries --dry-run --json",
            "degrade": "mdadm /dev/md/esp --fail /dev/vdb1 --remove /dev/vdb1",
            "degraded": f"{esp_mirror_cli()} status --json",
            "degraded-text": f"{esp_mirror_cli()} status",
        }
    )
    guest = run_in_guest("set -u\n" + script, system.disks, system.nvram, assets=vm_assets, log_dir=system.work)
    out = {name: outcome(text) for name, text in parse_sections(guest.stdout, 1)[0].items()}

    assert (out["not-set-up"].rc, as_json(out["not-set-up"])["setup"]) == (2, False)
    healthy = as_json(out["healthy"])
    assert (out["healthy"].rc, healthy["problems"]) == (0, [])
    assert [m["state"] for m in healthy["array"]["members"]] == ["in_sync", "in_sync"]
    assert healthy["mount"]["device"].startswith("/dev/md")
    assert all(e["entry"] and e["file_exists"] for e in healthy["entries"])

    missing = as_json(out["missing-entry"])
    assert out["missing-entry"].rc == 1
    assert [e["disk"] for e in missing["entries"] if e["entry"] is None] == ["/dev/vdb"]

    before, after = (nvram.parse(out[n].output) for n in ("before", "after"))
    [theirs] = [e for e in before.entries if e.label == "Someone else"]
    assert out["entries"].rc == 0, out["entries"].output
    assert theirs in after.entries  # untouched: same number, label and path
    ours = [e for e in after.entries if "(esp-mirror " in e.label]
    assert sorted(e.label for e in ours) == [entry_label(disk_serial(0)), entry_label(disk_serial(1))]
    assert after.order[:2] == tuple(e.number for e in sorted(ours, key=lambda e: e.label))
    assert theirs.number in after.order[2:]
    assert as_json(out["entries-again"])["plan"][0]["steps"] == []

    degraded = as_json(out["degraded"])
    assert (out["degraded"].rc, degraded["array"]["degraded"]) == (1, 1)
    assert "degraded" in out["degraded-text"].output


def test_add_a_third_disk_boot_it_alone_then_release_it_and_it_boots_alone_as_a_plain_esp(
    system: Installed, vm_assets: Assets
) -> None:
    """add makes disk C a third member, which the firmware boots alone through esp-mirror's
    entry; ``release --disk`` takes it out again (issue 24): the mirror of A and B stays whole,
    and C, a plain FAT with no md superblock, boots alone through an entry of its own."""
    disk_c = blank_disk(system.work / "disk-c.img", 1024)
    out = run(
        system,
        [*system.disks, disk_c],
        BOTH,
        {
            "add": f"{esp_mirror_cli()} add --disk /dev/vdc --yes --json",
            "status": f"{esp_mirror_cli()} status --json",
            "record": "cat /etc/esp-mirror/esp-mirror.yaml",
        },
        vm_assets,
    )
    assert out["add"].rc == 0, out["add"].output
    status = as_json(out["status"])
    assert (out["status"].rc, status["array"]["raid_disks"]) == (0, 3), status["problems"]
    assert [m["state"] for m in status["array"]["members"]] == ["in_sync"] * 3
    boot = boot_firmware([disk_c], system.nvram, assets=vm_assets, log_dir=system.work)
    assert boot.boot_entry_description == entry_label(disk_serial(2)), boot.serial_log
    assert boot.loader_device_partuuid == partition_uuid(disk_c)

    grown = dataclasses.replace(system, record=out["record"].output)  # the record add left (3 members)
    out = run(
        grown,
        [*system.disks, disk_c],
        [*BOTH, "/dev/vdc1"],
        {
            "release": f"{esp_mirror_cli()} release --disk /dev/vdc --yes",
            "status": f"{esp_mirror_cli()} status --json",
            "examine": "mdadm --examine /dev/vdc1",
            "blkid": "blkid -p -o export /dev/vdc1",
        },
        vm_assets,
    )
    assert out["release"].rc == 0, out["release"].output
    status = as_json(out["status"])
    assert (out["status"].rc, status["array"]["raid_disks"]) == (0, 2), status["problems"]
    assert sorted(m["node"] for m in status["array"]["members"]) == BOTH
    # a plain FAT: no md superblock (mdadm --examine finds only the boot sector's MBR signature)
    assert "Array UUID" not in out["examine"].output, out["examine"]
    assert "TYPE=vfat" in out["blkid"].output, out["blkid"]
    boot = boot_firmware([disk_c], system.nvram, assets=vm_assets, log_dir=system.work)
    assert boot.boot_entry_description == f"Debian ({disk_serial(2)})", boot.serial_log  # its own entry
    assert boot.loader_device_partuuid == partition_uuid(disk_c)


def test_repair_auto_picks_the_disk_the_firmware_booted_from(system: Installed, vm_assets: Assets) -> None:
    number_of_b = f"efibootmgr | sed -n 's/^Boot\\([0-9A-F]*\\)\\* {entry_label(disk_serial(1))}$/\\1/p'"
    prep = run_in_guest(
        f"set -eu\nefibootmgr -q -n $({number_of_b})\n",
        system.disks,
        system.nvram,
        assets=vm_assets,
        log_dir=system.work,
    )
    assert prep.rc == 0, prep.stderr
    script = (
        "set -u\n"
        + booted_prelude(system.record, BOTH, installed_files=system.files)
        + sections_script(
            {
                "status": f"{esp_mirror_cli()} status --json",
                "repair": f"{esp_mirror_cli()} repair --source auto --dry-run --json",
            }
        )
    )
    boot, guest = run_after_firmware_boot(script, system.disks, system.nvram, assets=vm_assets, log_dir=system.work)
    assert boot.boot_entry_description == entry_label(disk_serial(1)), boot.serial_log
    out = {name: outcome(text) for name, text in parse_sections(guest.stdout, 1)[0].items()}
    assert as_json(out["status"])["booted_disk"] == "/dev/vdb"
    assert out["repair"].rc == 0, out["repair"].output
    assert as_json(out["repair"])["source"] == "/dev/vdb1"
