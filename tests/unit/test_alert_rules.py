"""contrib/prometheus/esp-mirror.rules.yml: the example alerts name only metrics esp-mirror writes,
so a renamed series cannot leave an alert silently looking at nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import guid_of
from prometheus_client.parser import text_string_to_metric_families

from esp_mirror_plugin.upkeep import metrics
from esp_mirror_plugin.upkeep.lastcheck import LastCheck
from esp_mirror_plugin.upkeep.mirror import read_mirror

RULES = Path(__file__).resolve().parents[2] / "contrib/prometheus/esp-mirror.rules.yml"
METRIC = re.compile(r"\besp_mirror_[a-z0-9_]+\b")
ALERTS = (
    "EspMirrorDegraded",
    "EspMirrorDrift",
    "EspMirrorLoaderUnsignedUnderSecureBoot",
    "EspMirrorBootEntryMissing",
    "EspMirrorCheckNotRun",
    "EspMirrorMetricsStale",
    "EspMirrorUnhealthy",
)


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


@pytest.fixture
def emitted(mirror) -> set[str]:
    """Every metric name the renderer writes, from a booted healthy mirror with a last check and
    from the same mirror with its array stopped (the two together give every family)."""
    mirror.boot(number="0001", loader_partuuid=guid_of("vda"))
    mirror.secure_boot(False)
    texts = [metrics.render(read_mirror(mirror.runner, mirror.record, mirror.host), LastCheck(1.0, 0, 0, True), 2.0)]
    mirror.stop_array()
    texts.append(metrics.render(read_mirror(mirror.runner, mirror.record, mirror.host), None, 2.0))
    return {
        sample.name for text in texts for family in text_string_to_metric_families(text) for sample in family.samples
    }


def test_the_renderer_emits_every_family_it_documents(emitted):
    assert emitted == set(metrics.FAMILIES)


def test_every_alert_expression_names_only_metrics_the_renderer_emits(emitted):
    for rule in rules():
        named = set(METRIC.findall(rule["expr"]))
        assert named, f"{rule['alert']} looks at no esp-mirror metric"
        assert named <= emitted, f"{rule['alert']} names {sorted(named - emitted)}, which esp-mirror does not write"


def test_the_alerts_are_there_and_each_says_what_to_run():
    found = {rule["alert"]: rule for rule in rules()}
    assert tuple(found) == ALERTS
    for name, rule in found.items():
        summary, description = rule["annotations"]["summary"], rule["annotations"]["description"]
        assert summary and "`esp-mirror " in description, name
    assert "`esp-mirror repair --source DISK`" in found["EspMirrorDrift"]["annotations"]["description"]
    assert "`esp-mirror entries`" in found["EspMirrorBootEntryMissing"]["annotations"]["description"]
    assert "`esp-mirror status`" in found["EspMirrorDegraded"]["annotations"]["description"]
    assert found["EspMirrorDegraded"]["for"] == "5m"


def expr(rule: dict) -> str:
    return " ".join(rule["expr"].split())


def test_the_check_is_due_8_days_after_the_last_one_or_after_esp_mirror_was_set_up():
    """The refresh writes metrics from the first minutes of a new machine on, before any weekly
    check ran: "never ran" counts from the record's time, not from the metrics being there."""
    found = {rule["alert"]: rule for rule in rules()}
    assert expr(found["EspMirrorCheckNotRun"]) == (
        "time() - esp_mirror_last_check_timestamp_seconds > 8 * 86400 or ( "
        "time() - esp_mirror_record_timestamp_seconds > 8 * 86400 "
        "unless on (instance, array) esp_mirror_last_check_timestamp_seconds )"
    )


def test_metrics_are_stale_after_more_than_the_slowest_refresh_apply_installs():
    """systemd every 5 minutes, Alpine every 15, Gentoo and Void hourly (cronie's 0hourly at :01,
    run-crons' hourly once an hour passed on a 10- or 15-minute tick): up to about 75 minutes."""
    found = {rule["alert"]: rule for rule in rules()}
    assert expr(found["EspMirrorMetricsStale"]) == (
        "time() - esp_mirror_metrics_timestamp_seconds > 90 * 60 or absent(esp_mirror_metrics_timestamp_seconds)"
    )
    assert found["EspMirrorMetricsStale"]["for"] == "5m"


def test_unhealthy_leaves_a_running_resync_recovery_or_check_to_the_other_alerts():
    """status calls the array busy while md syncs it, which the 5-minute refresh now sees, and a
    check can wait hours behind one of a large array on the same disks."""
    found = {rule["alert"]: rule for rule in rules()}
    assert expr(found["EspMirrorUnhealthy"]) == (
        "esp_mirror_status_exit_code != 0 unless on (instance, array) esp_mirror_sync_progress_ratio < 1"
    )
    assert found["EspMirrorUnhealthy"]["for"] == "15m"


def test_an_unsigned_loader_alerts_only_where_the_firmware_enforces_secure_boot():
    """Per member and file; the Secure Boot series is left out when unknown, so `and` drops it."""
    found = {rule["alert"]: rule for rule in rules()}
    rule = found["EspMirrorLoaderUnsignedUnderSecureBoot"]
    assert expr(rule) == ("esp_mirror_member_loader_signed == 0 and on (instance, array) esp_mirror_secure_boot == 1")
    assert "`esp-mirror status`" in rule["annotations"]["description"] and rule["for"] == "15m"
