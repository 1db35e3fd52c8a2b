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
    assert "absent(esp_mirror_last_check_timestamp_seconds)" in found["EspMirrorCheckNotRun"]["expr"]
    assert "8 * 86400" in found["EspMirrorCheckNotRun"]["expr"]
