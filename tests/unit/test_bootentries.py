"""Firmware boot entries: parsing ``efibootmgr -v`` (captured outputs) and planning one entry per disk.

Every ``data/efibootmgr/*.txt`` is picked up automatically (see the README there); a sibling
``*.expected.json`` adds a field-by-field comparison.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
from conftest import DATA, bootorder_after, efibootmgr_create

from esp_mirror_plugin.hooks import bootentries
from esp_mirror_plugin.hooks.bootentries import Member
from esp_mirror_plugin.system import nvram
from esp_mirror_plugin.system.nvram import BootEntry, BootState

CAPTURES = sorted((DATA / "efibootmgr").glob("*.txt"))
WITH_EXPECTED = [p for p in CAPTURES if p.with_suffix(".expected.json").exists()]
A = Member(disk="/dev/sda", tag="WD-WCC4N0AAAAAA", part=1, partuuid="9e5fcc0b-84dd-5237-9e96-81c5ae21dfe0")
B = Member(disk="/dev/sdb", tag="WD-WCC4N0BBBBBB", part=1, partuuid="0a04ad40-f5b1-5bba-88d2-a1a719daf141")
NEW = [
    Member(disk="/dev/nvme0n1", tag="S6B0NL0T000001", part=1, partuuid="11111111-2222-5333-8444-555555555555"),
    Member(disk="/dev/nvme1n1", tag="S6B0NL0T000002", part=1, partuuid="66666666-7777-5888-9999-000000000000"),
]
GRUB = "\\EFI\\debian\\grubx64.efi"


def parsed(path: Path) -> BootState:
    return nvram.parse(path.read_text())


def expected(path: Path) -> dict:
    return json.loads(path.with_suffix(".expected.json").read_text())


def argvs(commands) -> list[tuple[str, ...]]:
    return [c.argv for c in commands]


def create(number: str, member: Member, loader: str = GRUB, label: str = "Debian") -> tuple[str, ...]:
    return efibootmgr_create(number, member.disk, member.tag, loader, label)


def delete(number: str) -> tuple[str, ...]:
    return ("efibootmgr", "--quiet", "--bootnum", number, "--delete-bootnum")


def bootorder(*numbers: str) -> tuple[str, ...]:
    return ("efibootmgr", "--quiet", "--bootorder", ",".join(numbers))


def entry(number: str, member: Member | None, label: str, loader: str = GRUB, active: bool = True) -> BootEntry:
    partuuid = member.partuuid if member else "deadbeef-0000-4000-8000-000000000000"
    return BootEntry(number, active, label, partuuid, loader, f"HD(1,GPT,{partuuid},0x800,0x100000)/File({loader})")


def lowest_free(state: BootState, count: int) -> list[str]:
    used = {e.number for e in state.entries}
    return list(itertools.islice((n for n in (f"{i:04X}" for i in range(0x10000)) if n not in used), count))


# -- parsing: every captured output -------------------------------------------------------------


def test_there_are_captures_of_both_efibootmgr_layouts():
    assert {p.name[:3] for p in CAPTURES} >= {"v17", "v18"}


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_every_boot_line_and_the_bootorder_are_parsed(capture):
    text = capture.read_text()
    state = parsed(capture)
    assert [e.number for e in state.entries] == re.findall(r"^Boot([0-9A-F]{4})[* ]", text, re.MULTILINE)
    [order_line] = re.findall(r"^BootOrder: (.*)$", text, re.MULTILINE)
    assert ",".join(state.order) == order_line.strip()
    for e in state.entries:
        if e.partuuid:
            assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", e.partuuid)
            assert f"gpt,{e.partuuid}," in text.lower()


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_planning_new_disks_on_any_captured_nvram_leaves_other_entries_alone(capture):
    """Only two creates: the lowest free numbers in disk order, made last disk first, so that
    efibootmgr's own prepending leaves ours first and the others in their order (no --bootorder)."""
    state = parsed(capture)
    first, second = lowest_free(state, 2)
    plan = argvs(bootentries.plan(state, NEW, "Test OS", GRUB))
    assert plan == [create(second, NEW[1], label="Test OS"), create(first, NEW[0], label="Test OS")]
    assert bootorder_after(state.order, plan) == (first, second, *state.order)


@pytest.mark.parametrize("capture", WITH_EXPECTED, ids=lambda p: p.name)
def test_parse_gives_numbers_states_partition_guids_and_order(capture):
    state, want = parsed(capture), expected(capture)
    assert (state.current, list(state.order)) == (want["current"], want["order"])
    assert [(e.number, e.active, e.partuuid) for e in state.entries] == [
        (w["number"], w["active"], w["partuuid"]) for w in want["entries"]
    ]


@pytest.mark.parametrize("capture", WITH_EXPECTED, ids=lambda p: p.name)
def test_parse_gives_label_and_loader_of_every_active_disk_entry(capture):
    """What planning relies on: the entries that point at a GPT partition."""
    state, want = parsed(capture), expected(capture)
    for got, w in zip(state.entries, want["entries"], strict=False):
        if w["partuuid"] and w["active"]:
            assert got.label == w["label"]
            if "loader" in w:
                assert got.loader == w["loader"]


@pytest.mark.parametrize("capture", WITH_EXPECTED, ids=lambda p: p.name)
def test_parse_matches_the_expected_file_in_every_field(capture):
    state, want = parsed(capture), expected(capture)
    got = [{k: getattr(e, k) for k in w} for e, w in zip(state.entries, want["entries"], strict=False)]
    assert got == want["entries"]


def test_firmware_volume_apps_have_no_loader():
    [uiapp] = nvram.parse(
        "Boot0000* UiApp\tFvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(462caa21-7614-4503-836e-8ab6f4662331)\n"
    ).entries
    assert uiapp.loader == ""


def test_inactive_entry_label_has_no_leading_space():
    [inactive] = nvram.parse(
        "Boot0006  Debian (esp-mirror WD-B)\tHD(1,GPT,0a04ad40-f5b1-5bba-88d2-"
        "a1a719daf141,0x800,0x100000)/File(\\EFI\\debian\\grubx64.efi)\n"
    ).entries
    assert (inactive.active, inactive.label) == (False, "Debian (esp-mirror WD-B)")


def test_a_line_without_a_tab_splits_at_the_device_path():
    [e] = nvram.parse(
        "Boot0003* Fedora HD(2,GPT,94ff4025-5276-4bec-adea-e98da271b64c,0x1000,0x3f800)/\\EFI\\fedora\\shimx64.efi\n"
    ).entries
    assert (e.label, e.partuuid, e.loader) == (
        "Fedora",
        "94ff4025-5276-4bec-adea-e98da271b64c",
        "\\EFI\\fedora\\shimx64.efi",
    )


# -- planning --------------------------------------------------------------------------------


@pytest.mark.parametrize("capture", ["v17-esp-mirror-rerun.txt", "v18-esp-mirror-rerun.txt"])
def test_rerun_keeps_the_good_entry_prunes_stale_duplicate_and_inactive_and_fixes_the_order(capture):
    """0001 is A's entry (kept); 0002 a replaced disk's (stale); 0003 a duplicate of A; 0006 B's but
    inactive; 0005 is another system's tagged entry and 0000/0004/0007 are not ours at all."""
    state = parsed(DATA / "efibootmgr" / capture)
    assert argvs(bootentries.plan(state, [A, B], "Debian", GRUB)) == [
        delete("0002"),
        delete("0003"),
        delete("0006"),
        create("0008", B),
        bootorder("0001", "0008", "0000", "0007", "0004", "0005"),
    ]


def test_on_nvram_without_our_entries_the_creates_alone_put_ours_first_in_disk_order():
    """The two_disks NVRAM (0000-0004 in use): A gets 0005, B 0006; B is created first."""
    state = parsed(DATA / "efibootmgr/v17-ovmf-debian.txt")
    plan = argvs(bootentries.plan(state, [A, B], "Debian", GRUB))
    assert plan == [create("0006", B), create("0005", A)]
    assert bootorder_after(state.order, plan) == ("0005", "0006", "0004", "0001", "0000", "0002", "0003")


VM_A = Member(disk="/dev/vda", tag="espvm-A", part=1, partuuid="5241326d-4933-54ab-b80c-0b322a369e3c")
VM_B = Member(disk="/dev/vdb", tag="espvm-B", part=1, partuuid="dde38973-08ee-5902-be9d-1c70339cfe83")
VM_LOADER = "\\EFI\\debian\\espvm-payload.efi"


def test_the_order_efibootmgr_left_in_the_vm_is_the_one_the_plan_expects():
    """v17-ovmf-captured-install.txt is the NVRAM a real apply left in the VM (disks /dev/vda and
    /dev/vdb, serials espvm-A and espvm-B) next to OVMF's UiApp: exactly what the creates alone give
    on an NVRAM holding only UiApp (0000). A re-run on it changes nothing."""
    before = BootState(None, ("0000",), (entry("0000", None, "UiApp", ""),))
    plan = argvs(bootentries.plan(before, [VM_A, VM_B], "Debian", VM_LOADER))
    assert plan == [create("0002", VM_B, VM_LOADER), create("0001", VM_A, VM_LOADER)]
    after = parsed(DATA / "efibootmgr/v17-ovmf-captured-install.txt")
    assert bootorder_after(before.order, plan) == after.order == ("0001", "0002", "0000")
    assert bootentries.plan(after, [VM_A, VM_B], "Debian", VM_LOADER) == ()


def test_a_kept_entry_behind_a_foreign_one_gets_an_explicit_bootorder():
    """A's entry 0001 is kept but UiApp boots before it; creating B alone would give 0002,0000,0001."""
    state = BootState(
        None,
        ("0000", "0001"),
        (entry("0000", None, "UiApp", ""), entry("0001", A, "Debian (esp-mirror WD-WCC4N0AAAAAA)")),
    )
    plan = argvs(bootentries.plan(state, [A, B], "Debian", GRUB))
    assert plan == [create("0002", B), bootorder("0001", "0002", "0000")]
    assert bootorder_after(state.order, plan[:-1]) == ("0002", "0000", "0001")
    assert bootorder_after(state.order, plan) == ("0001", "0002", "0000")


def test_a_kept_first_disk_entry_gets_an_explicit_bootorder_when_the_second_is_created():
    """The create would put B (0002) in front of A's kept 0001."""
    state = BootState(
        None,
        ("0001", "0000"),
        (entry("0000", None, "UiApp", ""), entry("0001", A, "Debian (esp-mirror WD-WCC4N0AAAAAA)")),
    )
    plan = argvs(bootentries.plan(state, [A, B], "Debian", GRUB))
    assert plan == [create("0002", B), bootorder("0001", "0002", "0000")]


def test_a_replaced_entry_behind_a_kept_one_gets_an_explicit_bootorder():
    """B's 0002 starts the old loader: deleted and made again as 0003, which the create alone would put
    in front of A's kept 0001."""
    state = BootState(
        None,
        ("0001", "0002", "0000"),
        (
            entry("0000", None, "UiApp", ""),
            entry("0001", A, "Debian (esp-mirror WD-WCC4N0AAAAAA)"),
            entry("0002", B, "Debian (esp-mirror WD-WCC4N0BBBBBB)", "\\EFI\\debian\\old.efi"),
        ),
    )
    plan = argvs(bootentries.plan(state, [A, B], "Debian", GRUB))
    assert plan == [delete("0002"), create("0003", B), bootorder("0001", "0003", "0000")]
    assert bootorder_after(state.order, plan[:-1]) == ("0003", "0001", "0000")


def test_kept_entries_in_the_wrong_order_get_an_explicit_bootorder_after_a_delete():
    """A stale duplicate of A (0003) is deleted; A's 0001 and B's 0002 stay, but B boots first."""
    state = BootState(
        None,
        ("0002", "0003", "0001", "0000"),
        (
            entry("0000", None, "UiApp", ""),
            entry("0001", A, "Debian (esp-mirror WD-WCC4N0AAAAAA)"),
            entry("0002", B, "Debian (esp-mirror WD-WCC4N0BBBBBB)"),
            entry("0003", A, "Debian (esp-mirror WD-WCC4N0AAAAAA)"),
        ),
    )
    plan = argvs(bootentries.plan(state, [A, B], "Debian", GRUB))
    assert plan == [delete("0003"), bootorder("0001", "0002", "0000")]


# Every NVRAM of: UiApp (0000), a foreign OS (0003) or not, A's and B's entries each missing, right,
# for an old loader or inactive, in every BootOrder of the numbers present (321 NVRAMs).
SHIM = "\\EFI\\debian\\shimx64.efi"
KINDS = ("missing", "right", "old-loader", "inactive")


def nvram_cases():
    for kind_a, kind_b, foreign in itertools.product(KINDS, KINDS, (False, True)):
        entries = [entry("0000", None, "UiApp", "")]
        for number, member, kind in (("0001", A, kind_a), ("0002", B, kind_b)):
            if kind != "missing":
                entries.append(
                    entry(
                        number,
                        member,
                        bootentries.label_for("Debian", member),
                        SHIM if kind == "old-loader" else GRUB,
                        active=kind != "inactive",
                    )
                )
        if foreign:
            entries.append(entry("0003", None, "Windows Boot Manager", "\\EFI\\Microsoft\\Boot\\bootmgfw.efi"))
        for order in itertools.permutations(e.number for e in entries):
            yield f"A {kind_a}, B {kind_b}, BootOrder {','.join(order)}", BootState(None, order, tuple(entries))


def check_plan(state: BootState) -> None:
    plan = argvs(bootentries.plan(state, [A, B], "Debian", GRUB))
    right = {
        e.partuuid: e.number for e in state.entries if e.number in ("0001", "0002") and e.active and e.loader == GRUB
    }
    deleted = [c[3] for c in plan if "--delete-bootnum" in c]
    assert deleted == [e.number for e in state.entries if e.number in ("0001", "0002") and e.partuuid not in right]
    missing = [m for m in (A, B) if m.partuuid not in right]
    numbers = dict(zip((m.partuuid for m in missing), lowest_free(state, len(missing)), strict=False))  # in disk order
    creates = [c for c in plan if "--create" in c]
    assert creates == [create(numbers[m.partuuid], m) for m in reversed(missing)]  # last disk first
    ours = [right.get(m.partuuid) or numbers[m.partuuid] for m in (A, B)]
    desired = (*ours, *(n for n in state.order if n not in ours and n not in deleted))
    without_bootorder = [c for c in plan if "--bootorder" not in c]
    if bootorder_after(state.order, without_bootorder) == desired:
        assert plan == without_bootorder
    else:
        assert plan == [*without_bootorder, bootorder(*desired)]
    assert bootorder_after(state.order, plan) == desired


def test_every_plan_leaves_ours_first_in_disk_order_and_sets_bootorder_only_when_needed():
    """Deletes of our wrong entries, then creates (lowest free numbers in disk order, made last disk
    first), then --bootorder only if what efibootmgr leaves differs from ours-first-in-disk-order
    followed by the others in their previous order."""
    cases = list(nvram_cases())
    assert len(cases) == 321
    for name, state in cases:
        try:
            check_plan(state)
        except AssertionError as error:
            raise AssertionError(f"NVRAM with {name}: {error}") from error


def test_a_number_left_in_bootorder_without_its_entry_is_not_reused_and_is_dropped():
    """Boot0001 was removed by firmware or another tool but 0001 is still in BootOrder: reusing it
    would list it twice (efibootmgr only prepends a created number); it is skipped and cleaned up."""
    state = BootState(None, ("0000", "0001"), (entry("0000", None, "UiApp", ""),))  # no Boot0001
    plan = argvs(bootentries.plan(state, [A, B], "Debian", GRUB))
    assert [a[a.index("--bootnum") + 1] for a in plan if "--create" in a] == ["0003", "0002"]
    assert bootorder_after(state.order, plan) == ("0002", "0003", "0000")


def test_nothing_to_do_when_every_disk_has_its_entry_first_in_order():
    state = BootState(
        "0004",
        ("0004", "0005", "0000"),
        (
            entry("0000", None, "UiApp", ""),
            entry("0004", A, "Debian (esp-mirror WD-WCC4N0AAAAAA)"),
            entry("0005", B, "Debian (esp-mirror WD-WCC4N0BBBBBB)"),
        ),
    )
    assert bootentries.plan(state, [A, B], "Debian", GRUB) == ()


def test_only_the_bootorder_is_set_when_the_entries_are_right_but_not_first():
    state = BootState(
        "0004",
        ("0000", "0005", "0004"),
        (
            entry("0000", None, "UiApp", ""),
            entry("0004", A, "Debian (esp-mirror WD-WCC4N0AAAAAA)"),
            entry("0005", B, "Debian (esp-mirror WD-WCC4N0BBBBBB)"),
        ),
    )
    assert argvs(bootentries.plan(state, [A, B], "Debian", GRUB)) == [bootorder("0004", "0005", "0000")]


def test_an_entry_for_the_old_loader_is_replaced_when_the_loader_changes():
    state = BootState(
        "0004",
        ("0004", "0005"),
        (
            entry("0004", A, "Debian (esp-mirror WD-WCC4N0AAAAAA)"),
            entry("0005", B, "Debian (esp-mirror WD-WCC4N0BBBBBB)"),
        ),
    )
    shim = "\\EFI\\debian\\shimx64.efi"
    plan = argvs(bootentries.plan(state, [A, B], "Debian", shim))
    assert plan == [delete("0004"), delete("0005"), create("0001", B, shim), create("0000", A, shim)]
    assert bootorder_after(state.order, plan) == ("0000", "0001")


def test_loader_comparison_ignores_case_as_fat_does():
    state = BootState(
        None, ("0004",), (entry("0004", A, "Debian (esp-mirror WD-WCC4N0AAAAAA)", "\\EFI\\DEBIAN\\GRUBX64.EFI"),)
    )
    assert bootentries.plan(state, [A], "Debian", GRUB) == ()


def test_new_numbers_fill_gaps_without_colliding():
    state = BootState(
        None,
        ("0000", "0001", "0002", "0003", "0005"),
        tuple(entry(n, None, f"Other {n}", "") for n in ("0000", "0001", "0002", "0003", "0005")),
    )
    plan = argvs(bootentries.plan(state, [A, B], "Debian", GRUB))
    assert plan == [create("0006", B), create("0004", A)]
    assert bootorder_after(state.order, plan) == ("0004", "0006", "0000", "0001", "0002", "0003", "0005")


def test_an_entry_of_ours_under_a_renamed_label_prefix_is_recreated():
    """The label is part of the identity: --entry-label changed from "Debian" to "Bookworm"."""
    state = BootState(None, ("0004",), (entry("0004", A, "Debian (esp-mirror WD-WCC4N0AAAAAA)"),))
    assert argvs(bootentries.plan(state, [A], "Bookworm", GRUB)) == [
        delete("0004"),
        create("0000", A, label="Bookworm"),
    ]


def test_another_systems_tagged_entry_on_a_foreign_partition_is_not_ours():
    other = entry("0007", None, "Ubuntu (esp-mirror S3YJNX0K)", "\\EFI\\ubuntu\\shimx64.efi")
    assert not bootentries.is_ours(other, "Debian", {A.partuuid})
    assert bootentries.is_ours(entry("0008", None, "Debian (esp-mirror OLD)"), "Debian", {A.partuuid})
    assert bootentries.is_ours(entry("0009", A, "Site (esp-mirror WD-WCC4N0AAAAAA)"), "Debian", {A.partuuid})


def test_a_stale_inactive_entry_of_ours_is_pruned():
    state = nvram.parse(
        "BootOrder: 0001,0002\n"
        f"Boot0001* Debian (esp-mirror WD-WCC4N0AAAAAA)\tHD(1,GPT,{A.partuuid},0x800,0x100000)/File({GRUB})\n"
        "Boot0002  Debian (esp-mirror WD-OLD)\tHD(1,GPT,3c7d1f2e-5a6b-4c8d-9e0f-1a2b3c4d5e6f,0x800,0x100000)/"
        f"File({GRUB})\n"
    )
    assert argvs(bootentries.plan(state, [A], "Debian", GRUB)) == [delete("0002")]  # leaves BootOrder 0001
