"""The mirror's health as Prometheus metrics (upkeep/metrics.py): what each state renders, read
back with prometheus_client's own parser; the atomic write; status and check with --metrics or
--metrics-dir.

The machine is :class:`conftest.Mirror` (/dev/vda and /dev/vdb mirrored as /dev/md/esp, booted,
healthy); each test breaks one thing, as test_upkeep_status.py does.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import threading

import pytest
from conftest import Mirror, fast_applier, guid_of, isolate_upkeep, upkeep_changes
from prometheus_client.parser import text_string_to_metric_families

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.pipeline import record as records
from esp_mirror_plugin.upkeep import lastcheck, metrics
from esp_mirror_plugin.upkeep.lastcheck import LastCheck
from esp_mirror_plugin.upkeep.mirror import read_mirror

NOW = 1_764_460_800.25  # 2025-11-30T00:00:00.25Z
CHECKED = 1_764_374_400.0  # a day before
SET_UP = 1_763_769_600.0  # a week before the check: when apply wrote the record
A, B = guid_of("vda"), guid_of("vdb")
ARRAY = (("array", "/dev/md/esp"),)
CLEAN = LastCheck(CHECKED, mismatch_cnt=0, files_differing=0, md_check=True)
VDA = (*ARRAY, ("member", "/dev/vda1"), ("disk", "/dev/vda"))
VDB = (*ARRAY, ("member", "/dev/vdb1"), ("disk", "/dev/vdb"))


def series(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(name, sorted labels) -> value of every sample, parsed by prometheus_client; each family a
    gauge with its help text."""
    out = {}
    for family in text_string_to_metric_families(text):
        assert (family.type, family.documentation) == ("gauge", metrics.FAMILIES[family.name]), family
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in out, f"{key} twice"
            out[key] = sample.value
    return out


def set_up_at(mirror: Mirror, when: float = SET_UP) -> None:
    """The record's time, as apply left it."""
    os.utime(mirror.sysroot / records.PATH, (when, when))


def rendered(mirror: Mirror, last_check: LastCheck | None = CLEAN) -> dict:
    set_up_at(mirror)
    state = read_mirror(mirror.runner, mirror.record, mirror.host)
    return series(metrics.render(state, last_check, NOW))


def by_array(**values: float) -> dict:
    return {(f"esp_mirror_{name}", tuple(sorted(ARRAY))): value for name, value in values.items()}


def without(found: dict, *dropped: tuple[str, tuple[tuple[str, str], ...]]) -> dict:
    keys = {(name, tuple(sorted(labels))) for name, labels in dropped}
    return {k: v for k, v in found.items() if k not in keys}


def per_member(name: str, *members: tuple[tuple[tuple[str, str], ...], float]) -> dict:
    return {(f"esp_mirror_{name}", tuple(sorted(labels))): value for labels, value in members}


LOADERS = ("\\EFI\\debian\\grubx64.efi", "\\EFI\\BOOT\\BOOTX64.EFI")  # the record's loader, the fallback


def loader_signed(member: tuple[tuple[str, str], ...], value: float = 0) -> dict:
    """The member's loader series; the test mirror's stand-in files carry no signature."""
    return per_member("member_loader_signed", *(((*member, ("path", p)), value) for p in LOADERS))


def loader_series(member: tuple[tuple[str, str], ...]) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    return tuple(("esp_mirror_member_loader_signed", (*member, ("path", p))) for p in LOADERS)


HEALTHY = {
    **by_array(
        array_running=1,
        members_expected=2,
        members_active=2,
        members_faulty=0,
        members_missing=0,
        sync_progress_ratio=1,
        mismatch_cnt=0,
        files_differing=0,
        efivars_readable=1,
        last_check_timestamp_seconds=CHECKED,
        last_check_success=1,
        record_timestamp_seconds=SET_UP,
        status_exit_code=0,
        metrics_timestamp_seconds=NOW,
    ),
    **per_member("boot_entry_missing", (VDA, 0), (VDB, 0)),
    **per_member("boot_disk_info", (VDA, 1)),
    **loader_signed(VDA),
    **loader_signed(VDB),
}


@pytest.fixture
def checked(mirror, monkeypatch):
    mirror.accept_changes()
    fast_applier(mirror, monkeypatch)
    mirror.boot(number="0001", loader_partuuid=A)
    return mirror


# -- what each state renders --------------------------------------------------------------------


def test_a_healthy_mirror(mirror):
    mirror.boot(number="0001", loader_partuuid=A)
    assert rendered(mirror) == HEALTHY


def test_a_degraded_mirror_with_a_member_missing(mirror):
    mirror.boot(number="0001", loader_partuuid=A)
    mirror.take_out("/dev/vdb1")

    assert rendered(mirror) == {
        **without(HEALTHY, ("esp_mirror_boot_entry_missing", VDB), *loader_series(VDB)),  # the array's members
        **by_array(members_active=1, members_missing=1, status_exit_code=1),
    }


def test_a_degraded_mirror_with_a_faulty_member(mirror):
    mirror.boot(number="0001", loader_partuuid=A)
    mirror.set_member("/dev/vdb1", "faulty", 1)
    mirror.set_md(degraded=1)

    found = rendered(mirror)

    assert found == {
        # a faulty member gets no entry series, and is not read
        **without(HEALTHY, ("esp_mirror_boot_entry_missing", VDB), *loader_series(VDB)),
        **by_array(members_active=1, members_faulty=1, members_missing=0, status_exit_code=1),
    }


def test_a_drifted_mirror_as_the_last_check_found_it(mirror):
    mirror.boot(number="0001", loader_partuuid=A)
    mirror.set_md(mismatch_cnt=128)
    drift = LastCheck(CHECKED, mismatch_cnt=128, files_differing=2, md_check=True)

    assert rendered(mirror, drift) == {
        **HEALTHY,
        **by_array(mismatch_cnt=128, files_differing=2, last_check_success=0, status_exit_code=1),
    }


@pytest.mark.parametrize(
    ("action", "completed", "ratio"),
    [
        ("recover", "262112 / 1048448", 0.25),
        ("check", "524224 / 1048448", 0.5),
        ("resync", "delayed", 0.0),  # waits for another array on the same disks
        ("resync", "none", 0.0),  # pending on a read-auto array until it is written
        ("idle", "none", 1.0),
    ],
)
def test_sync_progress_is_a_ratio_and_1_when_nothing_runs(mirror, action, completed, ratio):
    mirror.set_md(array_state="active", sync_action=action, sync_completed=completed)
    found = rendered(mirror)
    assert found[("esp_mirror_sync_progress_ratio", ARRAY)] == pytest.approx(ratio)
    assert found[("esp_mirror_status_exit_code", ARRAY)] == (0 if action == "idle" else 1)


def test_a_mirror_mid_recovery(mirror):
    mirror.boot(number="0001", loader_partuuid=A)
    mirror.set_member("/dev/vdb1", "spare", 1)  # md rebuilds it in slot 1
    mirror.set_md(degraded=1, array_state="active", sync_action="recover", sync_completed="131072 / 1048448")

    assert rendered(mirror) == {
        **without(HEALTHY, *loader_series(VDB)),  # half copied: its loaders are not read
        **by_array(members_active=1, members_missing=0, sync_progress_ratio=131072 / 1048448, status_exit_code=1),
    }


def test_without_efi_variables_the_boot_entry_series_are_left_out(mirror):
    mirror.boot(number="0001", loader_partuuid=A)
    for var in (mirror.sysroot / "sys/firmware/efi/efivars").iterdir():
        var.unlink()  # booted without UEFI, or efivarfs not mounted: LoaderDevicePartUUID is gone too

    assert rendered(mirror) == {
        **without(
            HEALTHY,
            ("esp_mirror_boot_entry_missing", VDA),
            ("esp_mirror_boot_entry_missing", VDB),
            ("esp_mirror_boot_disk_info", VDA),
        ),
        **by_array(efivars_readable=0),
    }


def test_nvram_that_cannot_be_read_is_not_efivars_readable(mirror):
    mirror.fail(("efibootmgr", "-v"), 2, "efibootmgr: EFI variables are not supported on this system.\n")

    found = rendered(mirror)

    assert found[("esp_mirror_efivars_readable", ARRAY)] == 0
    assert not [k for k in found if k[0] == "esp_mirror_boot_entry_missing"]
    assert found[("esp_mirror_status_exit_code", ARRAY)] == 1


def test_a_missing_boot_entry_is_1_for_that_member(mirror):
    mirror.delete_entry("0002")
    found = rendered(mirror)
    assert per_member("boot_entry_missing", (VDA, 0), (VDB, 1)).items() <= found.items()


def test_the_boot_disk_is_left_out_when_this_boot_did_not_come_from_a_member(mirror):
    mirror.boot(number="0003")  # the EFI shell
    assert not [k for k in rendered(mirror) if k[0] == "esp_mirror_boot_disk_info"]


def test_no_check_ever_ran_leaves_the_last_check_series_out(mirror):
    found = rendered(mirror, None)
    assert not {"esp_mirror_files_differing", "esp_mirror_last_check_timestamp_seconds"} & {k[0] for k in found}
    assert ("esp_mirror_last_check_success", ARRAY) not in found


def test_an_array_that_is_not_running_has_every_recorded_member_missing(mirror):
    mirror.stop_array()

    assert rendered(mirror, None) == by_array(
        array_running=0,
        members_expected=2,
        members_active=0,
        members_faulty=0,
        members_missing=2,
        efivars_readable=1,
        record_timestamp_seconds=SET_UP,
        status_exit_code=1,
        metrics_timestamp_seconds=NOW,
    )


def test_an_older_record_without_a_count_still_says_the_array_is_not_running(mirror):
    mirror.stop_array()
    set_up_at(mirror)
    state = read_mirror(mirror.runner, dataclasses.replace(mirror.record, members=None), mirror.host)

    found = series(metrics.render(state, None, NOW))

    assert found == by_array(
        array_running=0,
        members_active=0,
        members_faulty=0,
        efivars_readable=1,
        record_timestamp_seconds=SET_UP,
        status_exit_code=1,
        metrics_timestamp_seconds=NOW,
    )


def test_not_set_up_is_a_valid_file_that_says_so(machine):
    state = read_mirror(machine.runner, None, machine.host)

    assert series(metrics.render(state, None, NOW)) == by_array(
        array_running=0,
        members_active=0,
        members_faulty=0,
        efivars_readable=0,
        status_exit_code=2,
        metrics_timestamp_seconds=NOW,
    )


def test_the_record_time_is_when_apply_last_wrote_the_record_and_status_carries_it(mirror, tmp_path):
    """With no check yet, how long one has had to run: EspMirrorCheckNotRun's never-ran case."""
    set_up_at(mirror, SET_UP + 86400)

    mirror.cli("status", "--metrics", str(tmp_path / "m.prom"))

    found = series((tmp_path / "m.prom").read_text())
    assert found[("esp_mirror_record_timestamp_seconds", ARRAY)] == SET_UP + 86400
    assert ("esp_mirror_last_check_timestamp_seconds", ARRAY) not in found


def test_every_family_has_help_and_type_once_and_every_family_is_rendered_somewhere(mirror):
    mirror.boot(number="0001", loader_partuuid=A)
    mirror.secure_boot(True)
    text = metrics.render(read_mirror(mirror.runner, mirror.record, mirror.host), CLEAN, NOW)
    lines = text.splitlines()

    for name in metrics.FAMILIES:
        assert lines.count(f"# HELP {name} {metrics.FAMILIES[name]}") == 1
        assert lines.count(f"# TYPE {name} gauge") == 1
    assert all(line.startswith(("# ", "esp_mirror_")) for line in lines)
    assert text.endswith("\n")


def test_label_values_are_escaped(mirror):
    sample = metrics.Sample("esp_mirror_x", (("array", 'a "b" \\ c\nd'),), 1)
    assert sample.text() == 'esp_mirror_x{array="a \\"b\\" \\\\ c\\nd"} 1'


# -- the atomic write ---------------------------------------------------------------------------


def test_a_reader_never_sees_a_partial_or_empty_file(mirror, tmp_path):
    """As node_exporter reads the file while the weekly check writes it."""
    mirror.boot(number="0001", loader_partuuid=A)
    state = read_mirror(mirror.runner, mirror.record, mirror.host)
    file = tmp_path / "collector" / metrics.FILE_NAME
    file.parent.mkdir()
    metrics.write(file, metrics.render(state, CLEAN, NOW))
    done, reads, bad = threading.Event(), [], []

    def reader() -> None:
        while not done.is_set():
            text = file.read_text()
            try:  # an exception would end this thread unseen: every failure is kept for the assert
                stamp = series(text).get(("esp_mirror_metrics_timestamp_seconds", ARRAY))
            except Exception as exc:
                stamp = f"{type(exc).__name__}: {exc}"
            reads.append(stamp)
            if not text or not isinstance(stamp, float):
                bad.append((text, stamp))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(300):
            metrics.write(file, metrics.render(state, CLEAN, NOW + n))
    finally:
        done.set()
        thread.join()

    assert bad == []
    assert len(reads) > 10 and len(set(reads)) > 1  # it read while the file changed
    assert stat.S_IMODE(file.stat().st_mode) == 0o644
    assert [p.name for p in file.parent.iterdir()] == [metrics.FILE_NAME]  # no temporary file left


def test_a_file_in_a_missing_directory_is_bad_input_naming_the_fix(tmp_path):
    with pytest.raises(BadInput) as error:
        metrics.file_for(str(tmp_path / "nope" / "esp_mirror.prom"))
    assert str(error.value) == (
        f"cannot write the metrics to {tmp_path}/nope/esp_mirror.prom: the directory {tmp_path}/nope does not "
        "exist; create it (node_exporter's textfile collector directory) or give a file in an existing directory"
    )


# -- status --metrics and --metrics-dir ---------------------------------------------------------


def test_status_writes_the_metrics_file_and_exits_as_status_does(mirror, tmp_path):
    mirror.boot(number="0001", loader_partuuid=A)
    mirror.take_out("/dev/vdb1")
    file = tmp_path / "status.prom"

    outcome = mirror.cli("status", "--metrics", str(file))

    assert (outcome.code, outcome.err) == (1, "")
    assert outcome.out == mirror.cli("status").out  # what status shows does not change
    found = series(file.read_text())
    assert found[("esp_mirror_members_missing", ARRAY)] == 1
    assert found[("esp_mirror_status_exit_code", ARRAY)] == 1
    assert stat.S_IMODE(file.stat().st_mode) == 0o644


def test_status_metrics_carry_the_last_check_kept_by_check(mirror, tmp_path):
    (mirror.sysroot / lastcheck.PATH).parent.mkdir(parents=True)
    lastcheck.save(str(mirror.sysroot), LastCheck(CHECKED, 0, 2, md_check=False))

    mirror.cli("status", "--json", "--metrics", str(tmp_path / "m.prom"))

    found = series((tmp_path / "m.prom").read_text())
    assert by_array(files_differing=2, last_check_timestamp_seconds=CHECKED, last_check_success=0).items() <= (
        found.items()
    )


def test_status_of_a_system_not_set_up_still_writes_the_file(machine, monkeypatch, tmp_path):
    isolate_upkeep(machine, monkeypatch)

    outcome = machine.cli("status", "--metrics", str(tmp_path / "m.prom"))

    assert outcome.code == 2
    assert series((tmp_path / "m.prom").read_text())[("esp_mirror_status_exit_code", ARRAY)] == 2


def test_status_metrics_dir_writes_esp_mirror_prom_when_the_directory_exists(mirror, tmp_path):
    """What the metrics timer runs every few minutes: the members as md sees them now, the last
    check as check kept it."""
    mirror.boot(number="0001", loader_partuuid=A)
    mirror.set_member("/dev/vdb1", "faulty", 1)
    mirror.set_md(degraded=1)
    (mirror.sysroot / lastcheck.PATH).parent.mkdir(parents=True)
    lastcheck.save(str(mirror.sysroot), CLEAN)

    collector = tmp_path / "collector"
    collector.mkdir()

    outcome = mirror.cli("status", "--metrics-dir", str(collector))

    assert (outcome.code, outcome.err) == (1, "")
    assert outcome.out == mirror.cli("status").out
    found = series((collector / "esp_mirror.prom").read_text())
    assert (
        by_array(
            members_active=1,
            members_faulty=1,
            status_exit_code=1,
            files_differing=0,
            last_check_timestamp_seconds=CHECKED,
            last_check_success=1,
        ).items()
        <= found.items()
    )
    assert [p.name for p in collector.iterdir()] == ["esp_mirror.prom"]
    assert stat.S_IMODE((collector / "esp_mirror.prom").stat().st_mode) == 0o644


@pytest.mark.parametrize("healthy", [True, False])
def test_status_metrics_dir_that_does_not_exist_writes_nothing_and_exits_as_status_would(mirror, tmp_path, healthy):
    mirror.boot(number="0001", loader_partuuid=A)
    if not healthy:
        mirror.take_out("/dev/vdb1")
    plain = mirror.cli("status")

    outcome = mirror.cli("status", "--metrics-dir", str(tmp_path / "node-exporter"))

    assert (outcome.code, outcome.out, outcome.err) == (plain.code, plain.out, "")
    assert outcome.code == (0 if healthy else 1)
    assert not (tmp_path / "node-exporter").exists()
    assert list(tmp_path.rglob("*.prom")) == []


@pytest.mark.parametrize("command", ["status", "check"])
def test_metrics_and_metrics_dir_together_are_one_line_exit_2_and_nothing_runs(mirror, tmp_path, command):
    collector = tmp_path / "collector"
    collector.mkdir()

    outcome = mirror.cli(command, "--metrics", str(collector / "m.prom"), "--metrics-dir", str(collector))

    assert (outcome.code, outcome.out, outcome.calls) == (2, "", [])
    assert outcome.error == (
        f"argument --metrics-dir: not allowed with argument --metrics (see `esp-mirror {command} --help`)"
    )
    assert list(collector.iterdir()) == []


@pytest.mark.parametrize("command", [("status",), ("check",), ("check", "--no-md-check")])
def test_a_missing_metrics_directory_is_one_line_exit_2_and_nothing_runs(checked, tmp_path, command):
    missing = tmp_path / "no-such-dir"

    outcome = checked.cli(*command, "--metrics", str(missing / "esp_mirror.prom"))

    assert (outcome.code, outcome.out) == (2, "")
    assert outcome.error == (
        f"cannot write the metrics to {missing}/esp_mirror.prom: the directory {missing} does not exist; "
        "create it (node_exporter's textfile collector directory) or give a file in an existing directory"
    )
    assert upkeep_changes(outcome.calls) == []  # no md check, no sync
    assert not missing.exists()
    assert not (checked.sysroot / lastcheck.PATH).exists()


# -- check --metrics and --metrics-dir ----------------------------------------------------------


def test_check_writes_the_metrics_of_the_check_it_just_ran(checked, tmp_path):
    checked.members["/dev/vdb1"]["EFI/FW.TXT"] = b"one member only\n"
    checked.members["/dev/vdb1"]["EFI/debian/grub.cfg"] = b"changed on one member\n"
    file = tmp_path / "m.prom"

    outcome = checked.cli("check", "--metrics", str(file))

    assert outcome.code == 1
    found = series(file.read_text())
    kept = lastcheck.load(str(checked.sysroot))
    assert (
        by_array(
            files_differing=2, last_check_success=0, last_check_timestamp_seconds=kept.timestamp, mismatch_cnt=0
        ).items()
        <= found.items()
    )


def test_check_metrics_dir_writes_esp_mirror_prom_when_the_directory_exists(checked, tmp_path):
    outcome = checked.cli("check", "--metrics-dir", str(tmp_path))

    assert (outcome.code, outcome.err) == (0, "")
    found = series((tmp_path / "esp_mirror.prom").read_text())
    assert by_array(last_check_success=1, files_differing=0, status_exit_code=0).items() <= found.items()


@pytest.mark.parametrize("drift", [False, True])
def test_check_metrics_dir_that_does_not_exist_writes_nothing_and_exits_as_check_would(checked, tmp_path, drift):
    if drift:
        checked.members["/dev/vdb1"]["EFI/FW.TXT"] = b"one member only\n"

    outcome = checked.cli("check", "--metrics-dir", str(tmp_path / "node-exporter"))

    assert (outcome.code, outcome.err) == (int(drift), "")
    assert not (tmp_path / "node-exporter").exists()
    assert list(tmp_path.rglob("*.prom")) == []
    assert lastcheck.load(str(checked.sysroot)).files_differing == int(drift)


def test_the_weekly_run_of_own_check_none_profiles_starts_no_md_check(checked, tmp_path):
    checked.set_md(mismatch_cnt=8)  # what the distribution's checkarray left

    outcome = checked.cli("check", "--no-md-check", "--metrics-dir", str(tmp_path))

    assert upkeep_changes(outcome.calls) == [("sync",)]
    assert [c for c in outcome.calls if c[:2] == ("mdadm", "--misc")] == []
    assert checked.md_attr("sync_action") == "idle"
    assert outcome.code == 1
    found = series((tmp_path / "esp_mirror.prom").read_text())
    assert by_array(mismatch_cnt=8, last_check_success=0, files_differing=0).items() <= found.items()


def test_check_of_an_array_that_is_not_running_still_writes_the_metrics(checked, tmp_path):
    checked.stop_array()

    outcome = checked.cli("check", "--metrics-dir", str(tmp_path))

    assert outcome.code == 2
    assert outcome.error.startswith("/dev/md/esp is not running: assemble it first")
    found = series((tmp_path / "esp_mirror.prom").read_text())
    assert by_array(array_running=0, members_active=0, members_missing=2, status_exit_code=1).items() <= found.items()
