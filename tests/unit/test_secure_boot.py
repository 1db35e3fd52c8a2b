"""Secure Boot in status, check, entries and plan (issue 19, parts 2 and 3).

The machine is :class:`conftest.Mirror`, switched to shim (as Debian with shim-signed installs
it: \\EFI\\debian\\shimx64.efi, its second stage grubx64.efi, the fallback BOOTX64.EFI), its members
holding hand-built PE images (conftest.make_pe), each test breaking one thing.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import (
    BOOTLOADERS,
    PROFILES,
    Mirror,
    bootorder_after,
    equip_two_disks,
    fast_applier,
    guid_of,
    hd_path,
    make_efi_image,
    make_pe,
    upkeep_changes,
)
from prometheus_client.parser import text_string_to_metric_families

from esp_mirror_plugin.pipeline.bootloaders import BootloaderKind, spec
from esp_mirror_plugin.upkeep import commands, history, metrics
from esp_mirror_plugin.upkeep.mirror import read_mirror

A, B = guid_of("vda"), guid_of("vdb")
SHIM, GRUB, FALLBACK = "\\EFI\\debian\\shimx64.efi", "\\EFI\\debian\\grubx64.efi", "\\EFI\\BOOT\\BOOTX64.EFI"
MM, FB = "\\EFI\\debian\\mmx64.efi", "\\EFI\\BOOT\\fbx64.efi"
CA, MS = "Debian Secure Boot CA", "Microsoft Corporation UEFI CA 2011"
SHIM_SIGNED = make_pe((MS, "Microsoft Windows UEFI Driver Publisher"))
GRUB_SIGNED = make_pe((CA, "Debian Secure Boot Signer 2022 - grub2"))
UNSIGNED = make_pe()
CHAIN = {SHIM: SHIM_SIGNED, GRUB: GRUB_SIGNED, FALLBACK: SHIM_SIGNED}


def fat(path: str) -> str:
    return path.strip("\\").replace("\\", "/")


def use_shim(mirror: Mirror) -> Mirror:
    """The record, the boot entries and both members as apply leaves them with shim-signed."""
    mirror.record = dataclasses.replace(mirror.record, loader=SHIM)
    (mirror.sysroot / "etc/esp-mirror/esp-mirror.yaml").write_text(mirror.record.render())
    mirror.boot_entries = [
        (n, label, hd_path(guid, SHIM) if "esp-mirror" in label else path, active)
        for (n, label, path, active), guid in zip(mirror.boot_entries, ("", A, B, ""), strict=True)
    ]
    mirror._nvram_changed()
    (mirror.esp_dir / fat(SHIM)).write_bytes(SHIM_SIGNED)
    for node in mirror.members:
        mirror.members[node] = {fat(p): data for p, data in CHAIN.items()} | {"EFI/debian/grub.cfg": b"x\n"}
    return mirror


@pytest.fixture
def shim(mirror) -> Mirror:
    return use_shim(mirror)


def read(mirror: Mirror):
    return read_mirror(mirror.runner, mirror.record, mirror.host)


# -- the Secure Boot state ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secure_boot", "setup_mode", "expected"),
    [(True, None, True), (True, False, True), (False, None, False), (True, True, False), (None, None, None)],
    ids=["on", "on-user-mode", "off", "setup-mode", "no-variable"],
)
def test_secure_boot_is_the_secure_boot_variable_outside_setup_mode(shim, secure_boot, setup_mode, expected):
    if secure_boot is not None:
        shim.secure_boot(secure_boot, setup_mode)
    assert read(shim).secure_boot is expected


def test_without_efi_variables_secure_boot_is_unknown_but_the_loaders_are_still_read(shim):
    for var in (shim.sysroot / "sys/firmware/efi/efivars").iterdir():
        var.unlink()

    state = read(shim)
    outcome = shim.cli("status")

    assert state.secure_boot is None
    assert [f.describe() for f in state.loaders[1].files] == [
        "signed (Microsoft Corporation UEFI CA 2011, Microsoft Windows UEFI Driver Publisher)",
        f"signed ({CA}, Debian Secure Boot Signer 2022 - grub2)",
        "signed (Microsoft Corporation UEFI CA 2011, Microsoft Windows UEFI Driver Publisher)",
    ]
    assert "Secure Boot: unknown (no EFI variables)\n" in outcome.out


# -- status ---------------------------------------------------------------------------------------


def test_status_reads_the_loader_chain_from_each_member_read_only(shim):
    shim.secure_boot(True)

    outcome = shim.cli("status")

    assert (outcome.code, outcome.err) == (0, "")
    reads = [c[:-1] for c in outcome.calls if c[0] in ("blockdev", "mcopy")]
    chain = ("::/EFI/debian/shimx64.efi", "::/EFI/debian/grubx64.efi", "::/EFI/BOOT/BOOTX64.EFI")
    assert reads == [
        call
        for node in ("/dev/vda1", "/dev/vdb1")
        for call in (("blockdev", "--flushbufs"), ("mcopy", "-n", "-i", node, *chain))
    ]
    dests = [c[-1] for c in outcome.calls if c[0] == "mcopy"]
    assert len(set(dests)) == 2 and all("/esp-mirror-loaders-" in d and d.endswith("/") for d in dests), dests
    assert upkeep_changes(outcome.calls) == []
    shim_line = "signed (Microsoft Corporation UEFI CA 2011, Microsoft Windows UEFI Driver Publisher)"
    grub_line = f"signed ({CA}, Debian Secure Boot Signer 2022 - grub2)"
    assert outcome.out.splitlines()[-9:] == [
        "Secure Boot: on",
        "loader files, read from each member:",
        f"  /dev/vda1  {SHIM}  {shim_line}",
        f"             {GRUB}  {grub_line}",
        f"             {FALLBACK}    {shim_line}",
        f"  /dev/vdb1  {SHIM}  {shim_line}",
        f"             {GRUB}  {grub_line}",
        f"             {FALLBACK}    {shim_line}",
        "healthy",
    ]


def test_status_json_carries_secure_boot_and_each_members_loaders(shim):
    shim.secure_boot(False)
    shim.members["/dev/vdb1"].pop(fat(FALLBACK))

    report = json.loads(shim.cli("status", "--json").out)

    assert report["secure_boot"] is False
    vdb = report["array"]["members"][1]
    assert vdb["loaders"][0] == {
        "path": SHIM,
        "present": True,
        "pe": True,
        "signed": True,
        "signers": [MS, "Microsoft Windows UEFI Driver Publisher"],
        "digest": read(shim).loaders[1].files[0].signature.digest,
        "unreadable": None,
    }
    assert vdb["loaders"][2] == {
        "path": FALLBACK,
        "present": False,
        "pe": None,
        "signed": None,
        "signers": [],
        "digest": "",
        "unreadable": None,
    }


@pytest.mark.parametrize(
    ("broken", "what"),
    [
        ({GRUB: UNSIGNED}, f"member /dev/vdb1's {GRUB} carries no signature"),
        ({GRUB: None}, f"member /dev/vdb1 has no {GRUB}"),
        ({SHIM: UNSIGNED}, f"member /dev/vdb1's {SHIM} carries no signature"),
        ({FALLBACK: b"MZ not really\n"}, f"member /dev/vdb1's {FALLBACK} is not an EFI image"),
    ],
    ids=["second-stage-unsigned", "second-stage-missing", "entry-loader-unsigned", "fallback-not-pe"],
)
def test_an_unsigned_or_missing_loader_under_secure_boot_is_a_problem_naming_member_file_and_fix(shim, broken, what):
    shim.secure_boot(True)
    for path, data in broken.items():
        if data is None:
            shim.members["/dev/vdb1"].pop(fat(path))
        else:
            shim.members["/dev/vdb1"][fat(path)] = data

    state = read(shim)

    assert state.problems()[0] == (
        f"{what} and the firmware enforces Secure Boot: that disk will not boot; install the signed loader "
        "(shim-signed and grub-efi-amd64-signed on Debian and Ubuntu) and run `esp-mirror apply`"
    )
    assert state.exit_code() == 1


def test_without_secure_boot_an_unsigned_loader_on_every_member_is_no_problem(shim):
    shim.secure_boot(False)
    for node in shim.members:
        shim.members[node][fat(GRUB)] = UNSIGNED

    assert (read(shim).problems(), read(shim).exit_code()) == ([], 0)


@pytest.mark.parametrize("secure_boot", [True, False, None], ids=["on", "off", "unknown"])
def test_members_whose_loader_differs_in_signature_is_a_problem_whatever_secure_boot_says(shim, secure_boot):
    if secure_boot is not None:
        shim.secure_boot(secure_boot)
    shim.members["/dev/vdb1"][fat(GRUB)] = UNSIGNED

    problems = read(shim).problems()

    grub_line = f"signed ({CA}, Debian Secure Boot Signer 2022 - grub2)"
    assert problems[-1] == (
        f"{GRUB} is not signed alike on the members (/dev/vda1 {grub_line}, /dev/vdb1 unsigned): the disks do not "
        "boot alike; run `esp-mirror check`, then `esp-mirror repair --source /dev/vda`"
    )
    assert len(problems) == (2 if secure_boot else 1)


def test_members_signed_by_different_keys_differ_and_no_source_is_guessed(shim):
    shim.members["/dev/vdb1"][fat(GRUB)] = make_pe(("Someone else's key",))

    problem = read(shim).problems()[-1]

    assert problem.endswith("then `esp-mirror repair --source DISK` (the disk whose copy is right)")


def test_a_member_being_rebuilt_is_not_read(shim):
    shim.set_member("/dev/vdb1", "spare", 1)
    shim.set_md(degraded=1, array_state="active", sync_action="recover", sync_completed="131072 / 1048448")
    shim.members["/dev/vdb1"][fat(GRUB)] = b"half copied"

    state = read(shim)

    assert [m.node for m in state.loaders] == ["/dev/vda1"]
    assert not any("signed alike" in p for p in state.problems())


def test_an_aarch64_loader_brings_the_aarch64_fallback_and_second_stage(shim):
    record = dataclasses.replace(shim.record, loader="\\EFI\\debian\\shimaa64.efi")
    state = read_mirror(shim.runner, record, shim.host)
    assert [f.path for f in state.loaders[0].files] == [
        "\\EFI\\debian\\shimaa64.efi",
        "\\EFI\\debian\\grubaa64.efi",
        "\\EFI\\BOOT\\BOOTAA64.EFI",
    ]


def test_a_member_that_cannot_be_read_is_said_not_taken_for_missing_files(shim):
    shim.secure_boot(True)
    shim.fail(("mcopy", "-n", "-i", "/dev/vdb1"), 127, "mcopy: command not found")

    state = read(shim)

    assert {f.describe() for f in state.loaders[1].files} == {"cannot be read (mcopy: mcopy: command not found)"}
    assert state.problems() == []


# -- metrics --------------------------------------------------------------------------------------


def samples(mirror: Mirror) -> dict:
    text = metrics.render(read(mirror), None, 1.0)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name in ("esp_mirror_secure_boot", "esp_mirror_member_loader_signed")
    }


def test_metrics_carry_secure_boot_and_each_members_loader_signatures(shim):
    shim.secure_boot(True)
    shim.members["/dev/vdb1"][fat(GRUB)] = UNSIGNED

    found = samples(shim)

    array = ("array", "/dev/md/esp")
    assert found[("esp_mirror_secure_boot", (array,))] == 1
    member = {"/dev/vda1": "/dev/vda", "/dev/vdb1": "/dev/vdb"}
    assert {k: v for k, v in found.items() if k[0] == "esp_mirror_member_loader_signed"} == {
        (
            "esp_mirror_member_loader_signed",
            (array, ("disk", member[node]), ("member", node), ("path", path)),
        ): 0 if (node, path) == ("/dev/vdb1", GRUB) else 1
        for node in member
        for path in (SHIM, GRUB, FALLBACK)
    }


def test_an_unknown_secure_boot_state_leaves_its_series_out(shim):
    assert not any(name == "esp_mirror_secure_boot" for name, _ in samples(shim))


# -- entries someone else made on a member's partition ------------------------------------------


def fbx64_made_an_entry(mirror: Mirror) -> str:
    """B's entry lost, then a boot from B with no entry: shim's fallback makes "debian" for it,
    first in BootOrder."""
    mirror.delete_entry("0002")
    return mirror.create_entry("debian", hd_path(B, SHIM))


def test_status_names_an_entry_shims_fallback_made_for_a_member(shim):
    number = fbx64_made_an_entry(shim)
    other = shim.create_entry("Other", hd_path(A, "\\EFI\\other\\other.efi"))

    text, report = shim.cli("status"), json.loads(shim.cli("status", "--json").out)

    assert text.code == 1
    assert (
        f"boot entry {number} 'debian' starts {SHIM} from member /dev/vdb1 but was not made by esp-mirror "
        "(shim's fallback makes one after a boot with no entry): run `esp-mirror entries` to fold it into ours"
    ) in report["problems"]
    assert not any(f"entry {other} " in p for p in report["problems"])  # another loader: listed only
    assert "boot entries on the members' partitions not made by esp-mirror:\n" in text.out
    assert f"  Boot{number} 'debian' {SHIM} on /dev/vdb1 (duplicates ours)\n" in text.out
    assert f"  Boot{other} 'Other' \\EFI\\other\\other.efi on /dev/vda1\n" in text.out
    assert report["foreign_entries"] == [
        {"entry": number, "label": "debian", "loader": SHIM, "partuuid": B, "duplicates_ours": True},
        {
            "entry": other,
            "label": "Other",
            "loader": "\\EFI\\other\\other.efi",
            "partuuid": A,
            "duplicates_ours": False,
        },
    ]


def test_entries_folds_the_fallbacks_entry_into_ours_one_per_member_ours_first(shim):
    number = fbx64_made_an_entry(shim)
    assert shim.boot_order[0] == number
    shim.accept_changes()
    before = tuple(shim.boot_order)

    outcome = shim.cli("entries", "--yes")

    assert (outcome.code, outcome.err) == (0, "")
    changes = upkeep_changes(outcome.calls)
    assert changes[0] == ("efibootmgr", "--quiet", "--bootnum", number, "--delete-bootnum")
    order, entries = shim.nvram()
    assert bootorder_after(before, changes) == order
    ours = [e for e in entries if "esp-mirror" in e[1]]
    assert sorted(e[2] for e in ours) == sorted([hd_path(A, SHIM), hd_path(B, SHIM)])
    assert not any(e[1] == "debian" for e in entries)
    by_number = {e[0]: e for e in entries}
    assert [by_number[n][2] for n in order[:2]] == [hd_path(A, SHIM), hd_path(B, SHIM)]  # ours first, disk order
    assert not any("not made by esp-mirror" in p for p in read(shim).problems())


# -- check ----------------------------------------------------------------------------------------


@pytest.fixture
def checked(shim, monkeypatch):
    shim.accept_changes()
    fast_applier(shim, monkeypatch)
    return shim


def test_check_reports_a_loader_signed_on_one_member_only_and_exits_1(checked):
    checked.members["/dev/vdb1"][fat(GRUB)] = UNSIGNED

    text = checked.cli("check", "--no-md-check")
    report = json.loads(checked.cli("check", "--no-md-check", "--json").out)

    assert text.code == 1
    lines = text.out.splitlines()
    start = lines.index("loader signatures: 1 differ between the members (the disks do not boot alike)")
    digest = read(checked).loaders[0].files[1].signature.digest[:12]
    assert lines[start + 1 :] == [
        f"  {GRUB}",
        f"    /dev/vda1: signed ({CA}, Debian Secure Boot Signer 2022 - grub2) (certificates sha256 {digest})",
        "    /dev/vdb1: unsigned",
        "  run `esp-mirror repair --source /dev/vda`",
    ]
    assert [(d["path"], d["right"], d["members"]["/dev/vdb1"]["signed"]) for d in report["signature_differences"]] == [
        (GRUB, "/dev/vda", False)
    ]


def test_check_compares_shims_helpers_where_any_member_has_them(checked):
    checked.members["/dev/vda1"][fat(MM)] = SHIM_SIGNED
    checked.members["/dev/vda1"]["EFI/BOOT/FBX64.EFI"] = SHIM_SIGNED  # FAT names match whatever the case

    report = json.loads(checked.cli("check", "--no-md-check", "--json").out)

    assert [(d["path"], d["members"]["/dev/vdb1"]["present"]) for d in report["signature_differences"]] == [
        (MM, False),
        (FB, False),
    ]


def test_check_of_members_signed_alike_reports_no_signature_difference(checked):
    outcome = checked.cli("check", "--no-md-check")
    assert (outcome.code, "loader signatures" in outcome.out) == (0, False)


def test_check_and_status_compare_signatures_the_same_way(checked, tmp_path):
    checked.members["/dev/vdb1"][fat(SHIM)] = make_pe(("Another key",))
    state = read_mirror(checked.runner, checked.record, checked.host, read_loaders=False)

    with commands.scratch("t-") as workdir:
        copies, _ = commands.compare_members(checked.runner, state, workdir)
        from_copies = commands.member_loaders(state, copies)

    assert from_copies == read(checked).loaders


# -- plan: notes when the firmware enforces Secure Boot -------------------------------------------

SIGNED_IMAGE = make_pe((CA, "Someone's kernel signing key"))


def plan_notes(machine, *args: str) -> list[str]:
    outcome = machine.cli("plan", *machine.args(), *args, "--json")
    assert outcome.code == 0, outcome.err
    return [n for g in json.loads(outcome.out)["groups"] if g["name"] == "bootloader" for n in g["notes"]]


@pytest.mark.parametrize("bootloader", ["efi", "zfsbootmenu"])
@pytest.mark.parametrize("secure_boot", [True, False, None], ids=["on", "off", "unknown"])
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_an_unsigned_efi_image_under_secure_boot_gets_a_note(machine, tmp_path, bootloader, secure_boot, signed):
    equip_two_disks(machine)
    if secure_boot is not None:
        machine.secure_boot(secure_boot)
    image = make_efi_image(tmp_path)
    image.write_bytes(SIGNED_IMAGE if signed else UNSIGNED)

    notes = plan_notes(machine, "--profile", "debian", "--bootloader", bootloader, "--efi-image", str(image))

    expected = [
        f"Secure Boot is on and {image} carries no signature: the firmware will refuse to start it from every "
        "disk; sign it (`sbsign --key KEY --cert CERT`) with a key in db or shim's MOK list"
    ]
    assert notes == (expected if secure_boot and not signed else [])


@pytest.mark.parametrize("shim_installed", [True, False], ids=["shim", "no-shim"])
def test_grub_without_shim_under_secure_boot_gets_a_note_naming_the_packages(machine, shim_installed):
    equip_two_disks(machine)
    machine.secure_boot(True)
    if shim_installed:
        (machine.target / "usr/lib/shim").mkdir(parents=True)
        (machine.target / "usr/lib/shim/shimx64.efi.signed").write_bytes(SHIM_SIGNED)

    notes = plan_notes(machine, "--profile", "debian", "--bootloader", "grub")

    assert notes == (
        []
        if shim_installed
        else [
            "Secure Boot is on and the target has no shim (the entries would start GRUB, \\EFI\\debian\\grubx64.efi, "
            "directly): the firmware will refuse to start it from every disk; install shim-signed and "
            "grub-efi-amd64-signed on Debian and Ubuntu, then plan again"
        ]
    )


@pytest.mark.parametrize(
    ("release", "installed", "note"),
    [
        (
            "12",
            ("systemd-boot",),
            "Secure Boot is on and debian 12 ships no signed systemd-boot: the firmware will refuse to start it "
            "from every disk; use --bootloader grub with shim-signed and grub-efi-amd64-signed on Debian and Ubuntu",
        ),
        ("13", ("systemd-boot", "shim"), None),
        (
            "13",
            ("shim",),
            "Secure Boot is on and the target lacks the signed chain for systemd-boot (shim, then systemd-boot "
            "{signed}): the firmware will refuse to start it from every disk; install systemd-boot-efi-amd64-signed, "
            "then plan again",
        ),
        (
            "13",
            ("systemd-boot",),
            "Secure Boot is on and the target lacks the signed chain for systemd-boot (shim, then systemd-boot "
            "{signed}): the firmware will refuse to start it from every disk; install shim-signed, then plan again",
        ),
    ],
    ids=["debian-12", "debian-13-signed", "debian-13-no-signed-sd-boot", "debian-13-no-shim"],
)
def test_systemd_boot_under_secure_boot_needs_the_releases_signed_chain(machine, release, installed, note):
    """Debian 13 signs systemd-boot and starts it through shim; Debian 12 ships no signed build."""
    equip_two_disks(machine)
    machine.secure_boot(True)
    (machine.target / "etc/os-release").write_text(f'ID=debian\nVERSION_ID="{release}"\n')
    signed = machine.target / "usr/lib/systemd/boot/efi/systemd-bootx64.efi.signed"
    files = {"systemd-boot": signed, "shim": machine.target / "usr/lib/shim/shimx64.efi.signed"}
    for name in installed:
        files[name].parent.mkdir(parents=True, exist_ok=True)
        files[name].write_bytes(SIGNED_IMAGE)

    notes = plan_notes(machine, "--profile", "debian", "--bootloader", "systemd-boot")

    assert notes == ([] if note is None else [note.format(signed=signed)])


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("bootloader", BOOTLOADERS)
def test_with_secure_boot_off_no_profile_or_bootloader_gets_a_secure_boot_note(machine, tmp_path, profile, bootloader):
    equip_two_disks(machine)
    machine.secure_boot(False)
    extra = ("--efi-image", str(make_efi_image(tmp_path))) if spec(BootloaderKind(bootloader)).needs_image else ()

    outcome = machine.cli("plan", *machine.args(), "--profile", profile, "--bootloader", bootloader, *extra)

    assert outcome.code == 0, outcome.err
    assert "Secure Boot" not in outcome.out


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_prints_the_note_for_an_unsigned_efi_image_under_secure_boot(machine, tmp_path, profile):
    equip_two_disks(machine)
    machine.secure_boot(True)
    image = make_efi_image(tmp_path)  # "MZ" and text: no certificate table at all

    outcome = machine.cli(
        "plan", *machine.args(), "--profile", profile, "--bootloader", "efi", "--efi-image", str(image)
    )

    assert outcome.code == 0, outcome.err
    assert f"# note: Secure Boot is on and {image} carries no signature: the firmware will refuse" in outcome.out


def test_heal_at_boot_folds_the_fallbacks_entry_and_says_so(shim, monkeypatch):
    """After a boot with no entry (fbx64 made "debian" for B), heal at boot sets the entries as
    `esp-mirror entries` does, and the history says why."""
    number = fbx64_made_an_entry(shim)
    shim.accept_changes()
    fast_applier(shim, monkeypatch)

    outcome = shim.cli("heal", "--why", "boot")

    assert (outcome.code, outcome.err) == (0, "")
    changes = upkeep_changes(outcome.calls)
    assert changes[0] == ("efibootmgr", "--quiet", "--bootnum", number, "--delete-bootnum")
    order, entries = shim.nvram()
    ours = {e[0]: e[2] for e in entries if "esp-mirror" in e[1]}
    assert [ours.get(n) for n in order[:2]] == [hd_path(A, SHIM), hd_path(B, SHIM)]
    assert not any(e[1] == "debian" for e in entries)
    [line] = history.read(str(shim.sysroot))
    assert line.endswith(
        f"boot entries set at boot: {number} 'debian' (made by shim's fallback) folded into ours, one per member"
    ), line
    assert line in outcome.out
    # the next boot finds nothing to do and writes no EFI variable
    again = shim.cli("heal", "--why", "boot")
    assert again.code == 0 and upkeep_changes(again.calls) == []


def test_heal_by_hand_or_on_hot_plug_leaves_nvram_to_entries(shim, monkeypatch):
    fbx64_made_an_entry(shim)
    shim.accept_changes()
    fast_applier(shim, monkeypatch)
    for why in ("hand", "hot-plug"):
        outcome = shim.cli("heal", "--why", why)
        assert outcome.code == 0 and upkeep_changes(outcome.calls) == [], (why, outcome.calls)
