"""`esp-mirror entries`: one firmware boot entry of ours per member, ours first, others untouched."""

from __future__ import annotations

import json

from conftest import assert_upkeep_only_read, efibootmgr_create, guid_of, hd_path, upkeep_changes

OTHER = hd_path(guid_of("vda"), "\\EFI\\other\\other.efi")
NOTHING_TO_DO = {
    "plan": [
        {
            "name": "entries",
            "steps": [],
            "notes": ["NVRAM already holds one entry of ours per member, first in BootOrder"],
        }
    ],
    "would_change": 0,
    "undecided": 0,
    "applied": False,
}


def test_entries_on_a_correct_nvram_plans_nothing_and_runs_nothing(mirror):
    mirror.accept_changes()

    planned = mirror.cli("entries", "--dry-run", "--json")
    applied = mirror.cli("entries", "--yes")

    assert (planned.code, json.loads(planned.out)) == (0, NOTHING_TO_DO)
    assert applied.code == 0
    assert_upkeep_only_read(applied.calls)


def test_entries_restores_a_deleted_entry_of_ours_and_leaves_the_others_alone(mirror):
    """As tests/vm/test_upkeep.py: B's entry deleted, then someone else's made (it takes the free 0002)."""
    mirror.delete_entry("0002")
    theirs = mirror.create_entry("Someone else", OTHER)
    mirror.accept_changes()
    assert (theirs, mirror.boot_order) == ("0002", ["0002", "0001", "0000", "0003"])
    before = mirror.nvram()[1]

    outcome = mirror.cli("entries", "--yes")

    assert (outcome.code, outcome.err) == (0, "")
    assert upkeep_changes(outcome.calls) == [
        efibootmgr_create("0004", "/dev/vdb", "espvm-B"),
        ("efibootmgr", "--quiet", "--bootorder", "0001,0004,0002,0000,0003"),
    ]
    after = mirror.nvram()[1]
    assert [e for e in after if e[0] != "0004"] == before  # every other entry exactly as it was
    assert ("0004", "Debian (esp-mirror espvm-B)", hd_path(guid_of("vdb")), True) in after
    assert mirror.boot_order == ["0001", "0004", "0002", "0000", "0003"]  # ours first, in disk order
    again = mirror.cli("entries", "--dry-run", "--json")
    assert json.loads(again.out) == NOTHING_TO_DO


def test_entries_removes_stale_entries_of_ours_but_not_another_systems(mirror):
    mirror.create_entry("Debian (esp-mirror espvm-A)", hd_path(guid_of("vda")), "0005")  # a duplicate
    mirror.create_entry("Debian (esp-mirror espvm-Z)", hd_path("3c7d1f2e-5a6b-4c8d-9e0f-1a2b3c4d5e6f"), "0006")
    mirror.create_entry(
        "Ubuntu (esp-mirror S3YJNX0K)",
        hd_path("6d2e8a1c-3b4f-4e5a-8c9d-0e1f2a3b4c5d", "\\EFI\\ubuntu\\shimx64.efi"),
        "0007",
    )

    report = json.loads(mirror.cli("entries", "--dry-run", "--json").out)

    assert [tuple(s["argv"]) for s in report["plan"][0]["steps"]] == [
        ("efibootmgr", "--quiet", "--bootnum", "0005", "--delete-bootnum"),
        ("efibootmgr", "--quiet", "--bootnum", "0006", "--delete-bootnum"),
        ("efibootmgr", "--quiet", "--bootorder", "0001,0002,0007,0000,0003"),
    ]


def test_entries_on_a_degraded_mirror_keeps_entries_for_the_present_members_only(mirror):
    mirror.take_out("/dev/vdb1")
    report = json.loads(mirror.cli("entries", "--dry-run", "--json").out)
    assert [tuple(s["argv"]) for s in report["plan"][0]["steps"]] == [
        ("efibootmgr", "--quiet", "--bootnum", "0002", "--delete-bootnum")
    ]


def test_entries_text_plan_says_why_each_command_runs(mirror):
    mirror.delete_entry("0002")
    outcome = mirror.cli("entries", "--dry-run")
    assert outcome.out == (
        "# == entries ==\n"
        f"# boot entry for espvm-B (partition {guid_of('vdb')})\n"
        "efibootmgr --quiet --create --bootnum 0002 --disk /dev/vdb --part 1 --label 'Debian (esp-mirror espvm-B)' "
        "--loader '\\EFI\\debian\\grubx64.efi'\n"
        "# ours first, in disk order; the other entries keep their order\n"
        "efibootmgr --quiet --bootorder 0001,0002,0000,0003\n"
    )


def test_entries_needs_efi_variables(mirror):
    for var in (mirror.sysroot / "sys/firmware/efi/efivars").iterdir():
        var.unlink()

    outcome = mirror.cli("entries", "--yes")

    assert (outcome.code, outcome.error) == (
        2,
        "no EFI variables here (/sys/firmware/efi/efivars is empty): boot "
        "entries can only be made on a system booted through UEFI",
    )
    assert_upkeep_only_read(outcome.calls)


# What `bootctl update` (systemd 252, without --no-variables) left on the md ESP in the VM.
ZERO_PATH = "HD(0,GPT,00000000-0000-0000-0000-000000000000,0x0,0x0)/File(\\EFI\\systemd\\systemd-bootx64.efi)"


def test_an_entry_of_a_loader_on_the_esp_that_names_no_partition_is_named_by_status_and_removed_by_entries(mirror):
    (mirror.esp_dir / "EFI/systemd").mkdir(parents=True)
    (mirror.esp_dir / "EFI/systemd/systemd-bootx64.efi").write_bytes(b"MZ sd-boot")
    stray = mirror.create_entry("Linux Boot Manager", ZERO_PATH)  # bootctl appends it; the order matters not
    # not ours and not strays: another disk's removable path, and a zero path to a file not on the ESP
    other_disk = mirror.create_entry(
        "UEFI disk C", hd_path("3c7d1f2e-5a6b-4c8d-9e0f-1a2b3c4d5e6f", "\\EFI\\BOOT\\BOOTX64.EFI")
    )
    elsewhere = mirror.create_entry("Elsewhere", ZERO_PATH.replace("systemd\\systemd-bootx64", "other\\x"))
    mirror.accept_changes()

    status = json.loads(mirror.cli("status", "--json").out)
    assert [p for p in status["problems"] if "names no partition" in p] == [
        f"boot entry {stray} 'Linux Boot Manager' starts \\EFI\\systemd\\systemd-bootx64.efi on the ESP but names no "
        "partition (HD(0,GPT,00000000-...), made by a bootctl that could not tell the array's partition): "
        "run `esp-mirror entries` to remove it"
    ]
    assert status["exit_code"] == 1

    done = mirror.cli("entries", "--yes")
    assert done.code == 0, done.err
    assert ("efibootmgr", "--quiet", "--bootnum", stray, "--delete-bootnum") in upkeep_changes(done.calls)
    numbers = [e[0] for e in mirror.nvram()[1]]
    assert stray not in numbers and other_disk in numbers and elsewhere in numbers
    assert json.loads(mirror.cli("entries", "--dry-run", "--json").out)["would_change"] == 0
    assert json.loads(mirror.cli("status", "--json").out)["exit_code"] == 0
