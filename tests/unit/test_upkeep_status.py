"""Reading the running mirror (mirror.read_mirror) and `esp-mirror status`, text and --json.

The machine is :class:`conftest.Mirror`: /dev/vda and /dev/vdb mirrored as /dev/md/esp (md127),
mounted, one boot entry of ours per disk, the record apply wrote; each test breaks one thing.
"""

from __future__ import annotations

import json

import pytest
from conftest import ARRAY_UUID, GRUB_LOADER, Mirror, assert_only_read, fast_applier, guid_of, isolate_upkeep

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.system.discovery import Mount
from esp_mirror_plugin.upkeep import plans as upkeep
from esp_mirror_plugin.upkeep.mirror import ArrayState, MemberState, read_mirror

A, B = guid_of("vda"), guid_of("vdb")


DEGRADED = (
    "/dev/md/esp is degraded: 1 of 2 members missing or failed; put in a new disk and run "
    "`esp-mirror replace --old missing --new DISK`"
)


def read(machine: Mirror):
    return read_mirror(machine.runner, machine.record, machine.host)


# -- what read_mirror finds -------------------------------------------------------------------


def test_read_mirror_reports_the_array_its_members_slots_states_and_partition_guids(mirror):
    state = read(mirror)

    assert state.array == ArrayState(
        device="/dev/md/esp",
        kernel_name="md127",
        uuid=ARRAY_UUID,
        level="raid1",
        metadata="1.0",
        raid_disks=2,
        degraded=0,
        array_state="clean",
        sync_action="idle",
        sync_completed="none",
        mismatch_cnt=0,
        members=(
            MemberState(node="/dev/vda1", disk="/dev/vda", slot=0, state="in_sync", partuuid=A),
            MemberState(node="/dev/vdb1", disk="/dev/vdb", slot=1, state="in_sync", partuuid=B),
        ),
    )
    assert state.mount == Mount("9:127", str(mirror.esp), "vfat", "/dev/md127")
    assert state.mounted_members == ()
    assert [(e.member.node, e.entry.number, e.entry.loader, e.file_exists) for e in state.entries] == [
        ("/dev/vda1", "0001", GRUB_LOADER, True),
        ("/dev/vdb1", "0002", GRUB_LOADER, True),
    ]
    assert (state.problems(), state.exit_code()) == ([], 0)
    assert_only_read(mirror.runner.calls)


def test_members_are_listed_by_slot_and_a_spare_comes_last_without_a_slot(mirror_of):
    mirror = mirror_of("vda", "vdb", "vdc")
    mirror.set_member("/dev/vda1", "in_sync", 1)
    mirror.set_member("/dev/vdb1", "in_sync", 0)
    mirror.set_member("/dev/vdc1", "spare", None)
    mirror.set_md(raid_disks=2)

    members = read(mirror).array.members

    assert [(m.node, m.slot, m.state, m.active, m.usable) for m in members] == [
        ("/dev/vdb1", 0, "in_sync", True, True),
        ("/dev/vda1", 1, "in_sync", True, True),
        ("/dev/vdc1", None, "spare", False, True),
    ]


def test_a_member_mounted_directly_is_reported_with_what_to_do(mirror):
    mirror.mount(mirror.partition_devnum(mirror.disks["/dev/vdb"], 1), "/mnt", "vfat", "/dev/vdb1")

    state = read(mirror)

    assert state.mounted_members == ("/dev/vdb1",)
    assert state.problems() == ["member /dev/vdb1 is mounted directly: unmount it, mount /dev/md/esp"]
    assert state.exit_code() == 1


# -- which disk this boot came from -----------------------------------------------------------


def test_the_booted_member_is_the_one_systemd_names_in_loader_device_part_uuid(mirror):
    mirror.boot(loader_partuuid=B)

    state = read(mirror)

    assert state.loader_partuuid == B  # read as UTF-16LE upper case + NUL, compared in lower case
    assert state.booted_member.disk == "/dev/vdb"


def test_loader_device_part_uuid_wins_over_boot_current(mirror):
    mirror.boot(number="0001", loader_partuuid=B)
    assert read(mirror).booted_member.node == "/dev/vdb1"


def test_without_systemd_the_booted_member_is_found_through_boot_currents_entry(mirror):
    mirror.boot(number="0002")

    state = read(mirror)

    assert (state.boot_current, state.loader_partuuid) == ("0002", None)
    assert state.booted_member.node == "/dev/vdb1"


@pytest.mark.parametrize(
    "boot",
    [{}, {"number": "0003"}, {"loader_partuuid": "0b5e3c2a-1111-5222-8333-444455556666"}],
    ids=["no-variables", "boot-current-is-the-shell", "loader-partition-is-not-a-member"],
)
def test_no_booted_member_when_the_boot_did_not_come_from_a_member(mirror, boot):
    mirror.boot(**boot)
    assert read(mirror).booted_member is None


# -- health: problems and exit codes ----------------------------------------------------------


def lose_b(m: Mirror) -> None:
    """Disk B died and was pulled: its member is gone from the machine."""
    m.lose_disk("vdb")


def kick_b(m: Mirror) -> None:
    """md left B's member out (it missed writes); the partition is still there."""
    m.kick("/dev/vdb1")


def recovering_b(m: Mirror) -> None:
    m.set_member("/dev/vdb1", "spare", 1)
    m.set_md(degraded=1, array_state="active", sync_action="recover", sync_completed="131072 / 1048448")


def checking(m: Mirror) -> None:
    m.set_md(array_state="active", sync_action="check", sync_completed="524224 / 1048448")


def faulty_b(m: Mirror) -> None:
    m.set_member("/dev/vdb1", "faulty", 1)
    m.set_md(degraded=1)


def unmounted(m: Mirror) -> None:
    m.mountinfo = [line for line in m.mountinfo if " 9:127 " not in line]
    m._write_proc()


HEALTH = {
    "healthy": (lambda m: None, [], 0),
    "degraded": (
        lose_b,
        [DEGRADED],
        1,
    ),
    "kicked": (
        kick_b,
        [
            "/dev/md/esp is degraded: 1 of 2 members missing or failed; /dev/vdb1 (/dev/vdb) is here but out "
            "of the array: run `esp-mirror heal`"
        ],
        1,
    ),
    "kicked-with-newer-writes": (
        lambda m: m.kick("/dev/vdb1", events=130),
        [
            "/dev/md/esp is degraded: 1 of 2 members missing or failed; /dev/vdb1 (/dev/vdb) has newer writes "
            "than /dev/md/esp (events 130 > 120) and is not overwritten automatically: to keep the running "
            "array's copy, run `mdadm /dev/md/esp --add /dev/vdb1`"
        ],
        1,
    ),
    "faulty-member": (
        faulty_b,
        [
            "/dev/md/esp is degraded: 1 of 2 members missing or failed; /dev/vdb1 failed: run "
            "`esp-mirror replace --old /dev/vdb --new DISK`",
        ],
        1,
    ),
    "entry-missing": (
        lambda m: m.delete_entry("0002"),
        [f"no boot entry for /dev/vdb ({B}): run `esp-mirror entries`"],
        1,
    ),
    "loader-file-missing": (
        lambda m: (m.esp_dir / "EFI/debian/grubx64.efi").unlink(),
        [
            f"boot entry {n} names \\EFI\\debian\\grubx64.efi, which is not on the ESP: "
            "re-run `esp-mirror apply` to install the bootloader again"
            for n in ("0001", "0002")
        ],
        1,
    ),
    # while md rebuilds it, the spare is not called a problem of its own
    "busy-recovering": (
        recovering_b,
        [
            "/dev/md/esp is degraded: 1 of 2 members missing or failed; md is rebuilding /dev/vdb1: wait for it "
            "(`cat /proc/mdstat` shows how far)",
            "/dev/md/esp is busy: recover 131072 / 1048448",
        ],
        1,
    ),
    "busy-checking": (checking, ["/dev/md/esp is busy: check 524224 / 1048448"], 1),
    # assembled again after a power cut: read-auto, md shows "idle", the members still differ
    "resync-owed": (
        lambda m: m.set_md(array_state="read-auto", resync_start=65536),
        [
            "/dev/md/esp owes a resync md has not started (array read-auto; the members may differ): "
            "run `mdadm --readwrite /dev/md/esp`"
        ],
        1,
    ),
    "mismatches": (
        lambda m: m.set_md(mismatch_cnt=128),
        ["the last check found 128 mismatched sectors: run `esp-mirror check`"],
        1,
    ),
}


@pytest.mark.parametrize("case", HEALTH)
def test_problems_and_exit_code(mirror, case):
    breaks, problems, code = HEALTH[case]
    breaks(mirror)

    state = read(mirror)

    assert (state.problems(), state.exit_code()) == (problems, code)


def test_an_unmounted_esp_is_a_problem(mirror):
    unmounted(mirror)
    state = read(mirror)
    assert (state.mount, state.problems()[0], state.exit_code()) == (
        None,
        f"nothing is mounted at {mirror.esp}: run `mount {mirror.esp}`",
        1,
    )


def test_an_unmounted_esp_does_not_claim_the_loader_files_are_missing(mirror):
    unmounted(mirror)
    assert read(mirror).problems() == [f"nothing is mounted at {mirror.esp}: run `mount {mirror.esp}`"]


def test_not_set_up_is_exit_code_2_with_no_problems(machine):
    state = read_mirror(machine.runner, None, machine.host)
    assert (state.record, state.array, state.problems(), state.exit_code()) == (None, None, [], 2)
    assert machine.runner.calls == []  # no array, no EFI variables: nothing to ask


PROBLEMS_WITHOUT_A_FIX = {
    "degraded": lose_b,
    "kicked": kick_b,
    "faulty-member": faulty_b,
    "loader-file-missing": HEALTH["loader-file-missing"][0],
    "not-mounted": unmounted,
}


@pytest.mark.parametrize("case", PROBLEMS_WITHOUT_A_FIX)
def test_every_problem_line_says_what_to_run(mirror, case):
    PROBLEMS_WITHOUT_A_FIX[case](mirror)
    problems = read(mirror).problems()
    assert problems and all("`" in p for p in problems), problems


# -- esp-mirror status ------------------------------------------------------------------------


def test_status_of_a_healthy_mirror_as_text(mirror):
    mirror.boot(number="0001", loader_partuuid=A)
    mirror.secure_boot(False)

    outcome = mirror.cli("status")

    assert (outcome.code, outcome.err) == (0, "")
    assert outcome.out == (
        "/dev/md/esp (md127): raid1, metadata 1.0, 2/2 members, clean, idle, mismatch_cnt 0\n"
        "  member     disk      state    partition GUID                        boot entry  loader file\n"
        f"  /dev/vda1  /dev/vda  in_sync  {A}  Boot0001    ok\n"
        f"  /dev/vdb1  /dev/vdb  in_sync  {B}  Boot0002    ok\n"
        f"ESP: {mirror.esp} mounted from /dev/md127\n"
        "this boot: Boot0001 from /dev/vda\n"
        "Secure Boot: off\n"
        "loader files, read from each member:\n"
        "  /dev/vda1  \\EFI\\debian\\grubx64.efi  not an EFI image\n"
        "             \\EFI\\BOOT\\BOOTX64.EFI    not an EFI image\n"
        "  /dev/vdb1  \\EFI\\debian\\grubx64.efi  not an EFI image\n"
        "             \\EFI\\BOOT\\BOOTX64.EFI    not an EFI image\n"
        "healthy\n"
    )
    assert_only_read(outcome.calls)


def test_status_of_a_degraded_mirror_as_text(mirror):
    lose_b(mirror)
    mirror.boot(number="0003")  # the firmware fell back to the EFI shell

    outcome = mirror.cli("status")

    assert outcome.code == 1
    assert outcome.out == (
        "/dev/md/esp (md127): raid1, metadata 1.0, 1/2 members, clean, idle, mismatch_cnt 0\n"
        "  member     disk      state    partition GUID                        boot entry  loader file\n"
        f"  /dev/vda1  /dev/vda  in_sync  {A}  Boot0001    ok\n"
        f"ESP: {mirror.esp} mounted from /dev/md127\n"
        "this boot: Boot0003 (not from a member of ours)\n"
        "Secure Boot: unknown (the firmware has no SecureBoot variable)\n"
        "loader files, read from each member:\n"
        "  /dev/vda1  \\EFI\\debian\\grubx64.efi  not an EFI image\n"
        "             \\EFI\\BOOT\\BOOTX64.EFI    not an EFI image\n"
        "problems:\n"
        "  - /dev/md/esp is degraded: 1 of 2 members missing or failed; put in a new disk and run "
        "`esp-mirror replace --old missing --new DISK`\n"
    )


def test_status_shows_recovery_progress_and_missing_entries_in_the_table(mirror):
    recovering_b(mirror)
    mirror.delete_entry("0001")

    outcome = mirror.cli("status")

    assert outcome.code == 1
    assert outcome.out.splitlines()[:4] == [
        "/dev/md/esp (md127): raid1, metadata 1.0, 1/2 members, active, recover 131072 / 1048448, mismatch_cnt 0",
        "  member     disk      state    partition GUID                        boot entry  loader file",
        f"  /dev/vda1  /dev/vda  in_sync  {A}  MISSING     -",
        f"  /dev/vdb1  /dev/vdb  spare    {B}  Boot0002    ok",
    ]


NOT_PE = {"present": True, "pe": False, "signed": False, "signers": [], "digest": "", "unreadable": None}
FAKE_LOADERS = [{"path": GRUB_LOADER, **NOT_PE}, {"path": "\\EFI\\BOOT\\BOOTX64.EFI", **NOT_PE}]


def member_json(node: str, slot: int, guid: str, state: str = "in_sync") -> dict:
    """A member in status --json; its loaders as the test mirror's stand-in files read."""
    return {
        "node": node,
        "disk": node[:-1],
        "slot": slot,
        "state": state,
        "partuuid": guid,
        "loaders": FAKE_LOADERS if state == "in_sync" else [],
    }


def entry_json(disk: str, guid: str, number: str, serial: str) -> dict:
    return {
        "disk": disk,
        "partuuid": guid,
        "entry": number,
        "label": f"Debian (esp-mirror {serial})",
        "loader": GRUB_LOADER,
        "file_exists": True,
    }


def test_status_json_of_a_healthy_mirror(mirror):
    mirror.boot(number="0002")

    outcome = mirror.cli("status", "--json")

    assert outcome.code == 0
    assert json.loads(outcome.out) == {
        "setup": True,
        "exit_code": 0,
        "problems": [],
        "array": {
            "device": "/dev/md/esp",
            "kernel_name": "md127",
            "uuid": ARRAY_UUID,
            "level": "raid1",
            "metadata": "1.0",
            "raid_disks": 2,
            "degraded": 0,
            "array_state": "clean",
            "sync_action": "idle",
            "sync_completed": "none",
            "mismatch_cnt": 0,
            "members": [member_json("/dev/vda1", 0, A), member_json("/dev/vdb1", 1, B)],
        },
        "mount": {"mountpoint": str(mirror.esp), "device": "/dev/md127"},
        "mounted_members": [],
        "entries": [entry_json("/dev/vda", A, "0001", "espvm-A"), entry_json("/dev/vdb", B, "0002", "espvm-B")],
        "foreign_entries": [],
        "efivars": True,
        "secure_boot": None,
        "boot_current": "0002",
        "loader_device_partuuid": None,
        "booted_disk": "/dev/vdb",
        "busy": None,
        "last_event": None,
        "last_check": None,
    }


def test_status_json_of_a_degraded_mirror(mirror):
    lose_b(mirror)
    mirror.boot(loader_partuuid=A)

    outcome = mirror.cli("status", "--json")

    report = json.loads(outcome.out)
    assert (outcome.code, report["exit_code"]) == (1, 1)
    assert report["problems"] == [DEGRADED]
    assert {k: report["array"][k] for k in ("raid_disks", "degraded", "members")} == {
        "raid_disks": 2,
        "degraded": 1,
        "members": [member_json("/dev/vda1", 0, A)],
    }
    assert report["entries"] == [entry_json("/dev/vda", A, "0001", "espvm-A")]
    assert (report["loader_device_partuuid"], report["booted_disk"]) == (A, "/dev/vda")


# -- the fix for a member the array lacks: heal when it is still here, replace when it is gone ----


def problem_of(mirror: Mirror) -> str:
    outcome = mirror.cli("status", "--json")
    assert outcome.code == 1, outcome.err
    [problem] = json.loads(outcome.out)["problems"]
    return problem


def test_status_names_heal_for_a_member_that_is_present_but_out_of_the_array(mirror):
    kick_b(mirror)
    problem = problem_of(mirror)
    assert "/dev/vdb1 (/dev/vdb) is here but out of the array: run `esp-mirror heal`" in problem
    assert "replace" not in problem


def test_status_names_replace_for_a_member_whose_disk_is_gone(mirror):
    lose_b(mirror)
    problem = problem_of(mirror)
    assert problem.endswith("put in a new disk and run `esp-mirror replace --old missing --new DISK`")
    assert "heal" not in problem


def test_status_names_each_fix_when_one_member_is_here_and_another_gone(mirror_of):
    mirror = mirror_of("vda", "vdb", "vdc")
    mirror.kick("/dev/vdb1")
    mirror.lose_disk("vdc")
    assert problem_of(mirror) == (
        "/dev/md/esp is degraded: 2 of 3 members missing or failed; /dev/vdb1 (/dev/vdb) is here but out of "
        "the array: run `esp-mirror heal`; put in a new disk and run `esp-mirror replace --old missing --new DISK`"
    )


def test_what_status_calls_present_is_what_heal_takes_back(mirror, monkeypatch):
    kick_b(mirror)
    assert "run `esp-mirror heal`" in problem_of(mirror)
    mirror.accept_changes()
    fast_applier(mirror, monkeypatch)
    assert mirror.cli("heal").code == 0
    assert mirror.cli("status").code == 0


def test_a_superblock_that_cannot_be_read_is_said_not_guessed(mirror):
    lose_b(mirror)
    mirror.fail(("mdadm", "--examine", "--export", "/dev/vda1"), 1, "mdadm: cannot open /dev/vda1: Permission denied\n")
    problem = problem_of(mirror)
    assert "whether a member is still here cannot be told: cannot read the md superblock of /dev/vda1" in problem
    assert problem.endswith("put in a new disk and run `esp-mirror replace --old missing --new DISK`")


def test_a_healthy_array_is_not_searched_for_members_out_of_it(mirror):
    mirror.cli("status")
    assert not [argv for argv in mirror.runner.calls if argv[:2] == ("mdadm", "--examine")]


def test_status_says_not_set_up_and_exits_2_without_record_or_array(machine, monkeypatch):
    isolate_upkeep(machine, monkeypatch)

    text, as_json = machine.cli("status"), machine.cli("status", "--json")

    assert (text.code, text.out) == (
        2,
        "esp-mirror: not set up here (no /etc/esp-mirror/esp-mirror.yaml, no /dev/md/esp): `esp-mirror apply` "
        "(new disks) or `esp-mirror adopt` (a running system's ESP) sets it up\n",
    )
    assert as_json.code == 2
    assert json.loads(as_json.out) == {
        "setup": False,
        "exit_code": 2,
        "problems": [],
        "array": None,
        "mount": None,
        "mounted_members": [],
        "entries": [],
        "foreign_entries": [],
        "efivars": False,
        "secure_boot": None,
        "boot_current": None,
        "loader_device_partuuid": None,
        "booted_disk": None,
        "busy": None,
        "last_event": None,
        "last_check": None,
    }


def test_status_of_a_recorded_mirror_whose_array_is_not_running(mirror):
    mirror.stop_array()

    outcome = mirror.cli("status")

    assert (outcome.code, outcome.out) == (
        1,
        "/dev/md/esp: not running\nproblems:\n  - /dev/md/esp is not running: "
        "assemble it (`mdadm --assemble --scan --run`)\n",
    )


def test_status_json_names_the_array_that_is_not_running(mirror):
    mirror.stop_array()

    report = json.loads(mirror.cli("status", "--json").out)

    assert report["exit_code"] == 1
    assert any(p.startswith("/dev/md/esp is not running") for p in report["problems"]), report["problems"]


def test_status_is_not_healthy_when_nvram_cannot_be_read(mirror):
    mirror.fail(("efibootmgr", "-v"), 2, "efibootmgr: EFI variables are not supported on this system.\n")

    outcome = mirror.cli("status")

    assert "MISSING" in outcome.out  # what the table shows today
    assert (outcome.code, outcome.out.splitlines()[-1]) != (0, "healthy")


# -- what the upkeep commands take from where --------------------------------------------------


def test_changing_commands_refuse_a_system_esp_mirror_never_set_up(machine, monkeypatch):
    isolate_upkeep(machine, monkeypatch)
    outcome = machine.cli("entries", "--dry-run")
    assert (outcome.code, outcome.error) == (
        2,
        "no esp-mirror setup here (/etc/esp-mirror/esp-mirror.yaml is missing): run `esp-mirror apply` (new disks) "
        "or `esp-mirror adopt` (a running system's ESP) first",
    )


def test_changing_commands_refuse_when_the_recorded_array_is_not_running(mirror):
    mirror.stop_array()
    with pytest.raises(
        BadInput,
        match=r"^/dev/md/esp is not running: assemble it first "
        r"\(mdadm --assemble --scan --run\) or boot the installed system$",
    ):
        upkeep.require_array(read(mirror))


def test_status_reads_the_record_through_the_given_host_view(tmp_path):
    machine = Mirror(tmp_path)  # the record is in the host view's /etc; nothing is patched

    outcome = machine.cli("status", "--json")

    assert json.loads(outcome.out)["setup"] is True
