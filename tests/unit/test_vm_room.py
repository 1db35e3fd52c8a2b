"""The VM harness refuses a run the host's disk cannot hold, and names a full disk when a guest stops.

qemu pauses a guest whose disk write meets ENOSPC (its default werror=enospc), which looked like a
frozen guest in CI (2026-12-01: a whole run's images filled the disk); these tests pin the checks.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import NamedTuple

import pytest

from ci.vm import qemu
from ci.vm.images import blank_disk
from ci.vm.qemu import VmError

MIB = 1 << 20


class _Usage(NamedTuple):
    total: int
    used: int
    free: int


def _free(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: _Usage(10 * free + 1, 0, free))


def test_a_run_whose_sparse_images_may_outgrow_the_free_space_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = [blank_disk(tmp_path / "disk-a.img", 100), blank_disk(tmp_path / "disk-b.img", 100)]
    _free(monkeypatch, 150 * MIB)
    with pytest.raises(VmError, match=r"may grow by 200 MiB, and their file system has 150 MiB free"):
        qemu._check_room(images)


def test_a_run_with_room_for_its_images_goes_ahead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = [blank_disk(tmp_path / "disk-a.img", 100), blank_disk(tmp_path / "disk-b.img", 100)]
    _free(monkeypatch, 200 * MIB)
    qemu._check_room(images)


def test_a_guest_that_stops_on_a_full_host_disk_is_reported_as_that(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = blank_disk(tmp_path / "disk-a.img", 1)
    _free(monkeypatch, qemu.NEARLY_FULL - 1)
    with pytest.raises(VmError, match=r"^the heartbeat stopped: the host's file system holding .* has 255 MiB free"):
        qemu._check_not_full([image], "the heartbeat stopped")
    _free(monkeypatch, qemu.NEARLY_FULL)
    qemu._check_not_full([image], "the heartbeat stopped")
