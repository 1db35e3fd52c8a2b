"""Debian 13 (trixie): systemd-boot signed by Debian and started by shim, as its systemd-boot
postinst lays it out, on the mirror (issue 26). The release comes from the target's os-release."""

from __future__ import annotations

import json

import pytest
from conftest import Machine, equip_two_disks, json_commands, starting
from test_secure_boot import SIGNED_IMAGE

from esp_mirror_plugin.system import nvram

TRIXIE = 'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nNAME="Debian GNU/Linux"\nVERSION_ID="13"\nID=debian\n'
ARGS = "\\EFI\\systemd\\systemd-bootx64.efi \\0"


@pytest.fixture
def trixie(machine: Machine) -> Machine:
    """Two blank disks and a Debian 13 target with shim-signed and systemd-boot-efi-amd64-signed."""
    equip_two_disks(machine)
    (machine.target / "etc/os-release").write_text(TRIXIE)
    for rel in (
        "usr/lib/systemd/boot/efi/systemd-bootx64.efi.signed",
        *(f"usr/lib/shim/{n}x64.efi.signed" for n in ("shim", "fb", "mm")),
    ):
        (machine.target / rel).parent.mkdir(parents=True, exist_ok=True)
        (machine.target / rel).write_bytes(SIGNED_IMAGE)
    machine.add_target_programs("bootctl", root=machine.target)
    for unit in ("mdcheck_start.timer", "mdcheck_continue.timer"):
        (machine.target / "usr/lib/systemd/system" / unit).write_text("[Timer]\n")
    return machine


def _plan(machine: Machine) -> dict:
    outcome = machine.cli("plan", "--json", *machine.args(), "--bootloader", "systemd-boot")
    assert outcome.code == 0, outcome.err
    return json.loads(outcome.out)


def test_entries_start_shim_with_systemd_boot_as_its_argument(trixie: Machine) -> None:
    plan = _plan(trixie)
    creates = starting(json_commands(plan), "efibootmgr", "--quiet", "--create")
    assert len(creates) == 2
    for argv in creates:
        assert argv[argv.index("--loader") + 1] == "\\EFI\\debian\\shimx64.efi"
        assert argv[-2:] == ("--unicode", ARGS)


def test_the_esp_holds_shim_in_front_of_systemd_boot_as_debian_13_lays_it_out(trixie: Machine) -> None:
    plan = _plan(trixie)
    steps = [s for g in plan["groups"] if g["name"] == "bootloader" for s in g["steps"]]
    copies = {
        s["dest"].split("/boot/efi/", 1)[1]: s["source"].rsplit("/", 1)[1] for s in steps if s["kind"] == "copy-file"
    }
    assert copies == {
        "EFI/debian/shimx64.efi": "shimx64.efi.signed",
        "EFI/debian/fbx64.efi": "fbx64.efi.signed",
        "EFI/debian/mmx64.efi": "mmx64.efi.signed",
        "EFI/BOOT/BOOTX64.EFI": "shimx64.efi.signed",
        "EFI/BOOT/fbx64.efi": "fbx64.efi.signed",
    }
    (csv,) = [s for s in steps if s["kind"] == "write-file" and s["path"].endswith("BOOTX64.CSV")]
    assert csv["encoding"] == "utf-16-le"
    assert csv["content"] == f"shimx64.efi,Debian,{ARGS},This is the boot entry for Debian\n"
    # bootctl puts the signed systemd-boot in place first (shim then takes \EFI\BOOT\BOOTX64.EFI)
    kinds = [" ".join(s["argv"][-4:]) if s["kind"] == "command" else s["kind"] for s in steps]
    assert kinds.index(next(k for k in kinds if "bootctl" in k or "install --esp-path" in k)) < kinds.index("copy-file")
    record = next(s for s in steps if s["kind"] == "write-file" and s["path"].endswith("esp-mirror.yaml"))
    assert "loader: \\EFI\\debian\\shimx64.efi\n" in record["content"]
    assert (
        f"loader_args: {ARGS}\n" in record["content"]
        or "loader_args: '\\EFI\\systemd\\systemd-bootx64.efi \\0'\n" in record["content"]
    )


def test_a_run_again_keeps_entries_that_pass_systemd_boot_to_shim(trixie: Machine) -> None:
    first = _plan(trixie)
    guids = {m["disk"]: m["partition_guid"] for m in first["members"]}
    data = (ARGS + "\0").encode("utf-16-le").hex()
    path = "0x800,0x100000)/\\EFI\\debian\\shimx64.efi"
    entries = "".join(
        f"Boot000{n}* Debian (esp-mirror WD-WCC4N0{c * 6})\tHD(1,GPT,{guids[d]},{path}{data}\n"
        for n, c, d in ((4, "A", "/dev/sda"), (5, "B", "/dev/sdb"))
    )
    state = nvram.parse(entries)
    assert [e.args for e in state.entries] == [ARGS, ARGS]
    trixie.efibootmgr = "BootCurrent: 0004\nBootOrder: 0004,0005\n" + entries
    again = _plan(trixie)
    assert starting(json_commands(again), "efibootmgr") == []


def test_debian_12_keeps_systemd_boot_without_shim(machine: Machine) -> None:
    equip_two_disks(machine)
    (machine.target / "etc/os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    (machine.target / "usr/lib/shim").mkdir(parents=True)
    (machine.target / "usr/lib/shim/shimx64.efi.signed").write_bytes(SIGNED_IMAGE)
    machine.add_target_programs("bootctl", root=machine.target)
    plan = _plan(machine)
    creates = starting(json_commands(plan), "efibootmgr", "--quiet", "--create")
    assert all(
        a[a.index("--loader") + 1] == "\\EFI\\systemd\\systemd-bootx64.efi" and "--unicode" not in a for a in creates
    )
