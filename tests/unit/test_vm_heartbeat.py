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


class _Cpu:
    """qemu's CPU seconds, as the test moves them."""

    def __init__(self) -> None:
        self.seconds = 5.0

    def __call__(self, *stall: object) -> float:
        return self.seconds


@pytest.fixture
def cpu(monkeypatch: pytest.MonkeyPatch) -> _Cpu:
    cpu = _Cpu()
    monkeypatch.setattr(qemu._Stall, "_cpu", cpu)
    return cpu


def test_no_output_and_no_cpu_for_frozen_after_is_a_frozen_guest(tmp_path: Path, clock: _Clock, cpu: _Cpu) -> None:
    """An installed system that froze in early kernel init: OVMF and the kernel printed, then nothing,
    and qemu's vCPUs all halted. Caught after FROZEN_AFTER seconds, not at the run's timeout."""
    log = tmp_path / "serial.log"
    log.write_bytes(FIRMWARE)
    stall = qemu._Stall(1, (log,))
    clock.now += qemu.FROZEN_AFTER - 1
    cpu.seconds += 0.2
    assert stall.stopped() == ""
    clock.now += 2
    assert stall.stopped() == "no serial output and 0.2 s of qemu CPU"


def test_output_or_cpu_keeps_a_quiet_guest_alive(tmp_path: Path, clock: _Clock, cpu: _Cpu) -> None:
    log = tmp_path / "serial.log"
    log.write_bytes(FIRMWARE)
    stall = qemu._Stall(1, (log,))
    clock.now += qemu.FROZEN_AFTER - 1
    log.write_bytes(FIRMWARE + b"[  OK  ] Reached target multi-user.target\r\n")
    assert stall.stopped() == ""  # output: a new window
    clock.now += qemu.FROZEN_AFTER + 1
    cpu.seconds += 30  # busy without printing (an initramfs build): a window of its own
    assert stall.stopped() == ""
    clock.now += qemu.FROZEN_AFTER + 1
    assert stall.stopped().startswith("no serial output")
