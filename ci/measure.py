"""Times the real-distribution tests measure, printed together at the end of the pytest run.

Tests record what the issue asks to know (root builds, one regeneration per generator, boot to
multi-user, how long a degraded boot waits) with :func:`measurements`; a small plugin registered
on first use prints them as one table in pytest's terminal summary, so CI logs show them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

_PLUGIN_NAME = "esp-mirror-measurements"


@dataclass
class Measurements:
    rows: list[tuple[str, str, float, str]] = field(default_factory=list)

    def record(self, group: str, what: str, seconds: float, note: str = "") -> None:
        """Add one row; a row already recorded (a cached root seen by two fixtures) is kept once."""
        if not any(row[:2] == (group, what) and row[2] == seconds for row in self.rows):
            self.rows.append((group, what, seconds, note))

    def pytest_terminal_summary(self, terminalreporter) -> None:  # a pytest hook
        if not self.rows:
            return
        terminalreporter.section("esp-mirror: measured times")
        width = max(len(f"{g}: {w}") for g, w, _, _ in self.rows)
        for group, what, seconds, note in self.rows:
            label = f"{group}: {what}"
            terminalreporter.write_line(f"{label:{width}}  {seconds:7.1f} s  {note}".rstrip())


def measurements(config: pytest.Config) -> Measurements:
    """The session's measurements (registered as a plugin the first time it is asked for)."""
    plugin = config.pluginmanager.get_plugin(_PLUGIN_NAME)
    if plugin is None:
        plugin = Measurements()
        config.pluginmanager.register(plugin, _PLUGIN_NAME)
    return plugin
