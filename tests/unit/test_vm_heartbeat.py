"""The VM harness calls a guest frozen only when the installer initrd's beats stop, never because
the firmware's own console output on the heartbeat port ended (an installed system booted from
disk never beats: in CI on 2026-12-01 its boot was taken for a freeze after 120 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ci.vm import qemu
from ci.vm.initrd import BEAT_MARKER

FIRMWARE = b'BdsDxe: starting Boot0001 "Debian"\r\nWelcome to GRUB!\r\nLoading Linux 6.1.0-57-amd64 ...\r\n'


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    clock = _Clock()
    monkeypatch.setattr(qemu.time, "monotonic", clock)
    return clock


def test_firmware_output_on_the_heartbeat_port_is_no_heartbeat(tmp_path: Path, clock: _Clock) -> None:
    port = tmp_path / "serial.heartbeat"
    heartbeat = qemu._Heartbeat(port)
    port.write_bytes(FIRMWARE)
    assert not heartbeat.stopped()
    clock.now += 10 * qemu.FROZEN_AFTER
    assert not heartbeat.stopped()


def test_beats_that_stop_for_longer_than_frozen_after_mean_a_frozen_guest(tmp_path: Path, clock: _Clock) -> None:
    port = tmp_path / "serial.heartbeat"
    heartbeat = qemu._Heartbeat(port)
    port.write_bytes(FIRMWARE + f"{BEAT_MARKER} 3.1\n".encode())
    assert not heartbeat.stopped()
    clock.now += qemu.FROZEN_AFTER - 1
    with port.open("ab") as beats:
        beats.write(f"{BEAT_MARKER} 13.1\n".encode())
    assert not heartbeat.stopped()
    clock.now += qemu.FROZEN_AFTER
    assert not heartbeat.stopped()
    clock.now += 1.5
    assert heartbeat.stopped()
