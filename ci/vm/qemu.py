"""Run qemu-system-x86_64 with OVMF, raw disks and a serial log, under a hard timeout."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ci.vm.assets import Assets
from ci.vm.command import HOST_PATH, run_command
from ci.vm.initrd import BEAT_MARKER

_POLL_SECONDS = 0.5
# KVM breaks OVMF here (its emulation failure), so qemu's own translator runs the guests, each
# with one vCPU: under TCG a second one made a guest no faster, and took the second core that
# ci/test's other lane runs its guests on (docs/numbers.md, "CI").
# ESP_MIRROR_VM_ACCEL, _CPU and _SMP choose others.
TCG = "tcg"
SMP = "1"


class VmError(RuntimeError):
    """qemu failed, timed out, or the guest did not report; the message names the serial log."""


class GuestFroze(VmError):
    """The guest stopped while the host's disk had room: the installer initrd's heartbeat stopped,
    or qemu printed nothing and used (almost) no CPU: qemu or the guest kernel froze (not a script
    that hangs, which keeps the heartbeat going and prints what it waits for, see initrd.py)."""


FROZEN_AFTER = 120  # seconds without a heartbeat (the guest writes one every 10 s), or without output and CPU
# A guest that prints nothing makes qemu use this much CPU at least (a share of one core): an idle
# Linux guest under TCG still runs its timers; a frozen one (every vCPU halted) uses next to none.
IDLE_CPU = 0.01
# qemu's default for a drive's write errors is werror=enospc: a write the host's file system has
# no room for PAUSES the guest, silently, until someone resumes it. A run with less room than its
# sparse images may still take is refused up front, and a guest that stops while the host's disk
# is (nearly) full is reported as that, not as a freeze.
NEARLY_FULL = 256 << 20  # bytes free
_FREE_SOME = "free some space (a whole ci/test peaks at about 4 GB in /tmp, measured) and run again"


@dataclass(frozen=True)
class QemuRun:
    """A finished qemu process."""

    seconds: float
    serial_log: Path


def qemu_option(value: object) -> str:
    """Escape a value for a qemu ``-opt key=value,...`` list (commas are doubled)."""
    return str(value).replace(",", ",,")


def disk_serial(image: Path) -> str:
    """Return the virtio serial number of a disk image: disk-a.img is espvm-A, disk-c.img espvm-C.

    The serial follows the image, not its position, so a disk keeps its identity (and esp-mirror
    its partition GUID and entry label) wherever it is attached, as a real disk does.
    """
    return f"espvm-{image.stem.rsplit('-', 1)[-1].upper()}"


def run_qemu(
    assets: Assets,
    *,
    disks: Sequence[Path],
    vars_file: Path,
    serial_log: Path,
    timeout: float,
    extra_args: Sequence[str] = (),
    memory_mib: int = 2048,
    give_up_on: Mapping[str, str] | None = None,
    secure_boot: bool = False,
    again_if_frozen: Callable[[], None] | None = None,
) -> QemuRun:
    """Boot OVMF with ``disks`` (virtio, serial espvm-A, -B, ... in order) and wait for qemu to exit.

    A guest that freezes (:class:`GuestFroze`: seen under TCG now and then, inside ``efibootmgr
    --create``'s EFI variable write and in early kernel init) is caught within
    :data:`FROZEN_AFTER` seconds, not at the timeout; with ``again_if_frozen`` its disks and NVRAM
    are put back as they were (its writes went to qcow2 overlays, which are then dropped instead of
    committed), the function is called (to reset what else the run changed), the fact is said on
    stderr, and it runs once more. A second freeze is an error.

    The firmware's NVRAM is ``vars_file`` (written in place, so boot entries persist across runs).
    No ``bootindex`` is given, so the firmware's own BootOrder decides what boots. The guest's
    serial port goes to ``serial_log``, which is kept, and qemu's stderr next to it. qemu runs in its
    own process group, which is killed on timeout and on any exception, KeyboardInterrupt included.

    :param give_up_on: serial output that means the run has failed (text → what it means); qemu is
        stopped as soon as it appears instead of at the timeout.
    :param secure_boot: OVMF's Secure Boot build (it needs SMM and a flash only SMM may write):
        it enforces Secure Boot when ``vars_file`` has keys enrolled (images.fresh_vars ``keys``).
    :raises VmError: on timeout, on a ``give_up_on`` text, or when qemu exits non-zero.
    """
    if again_if_frozen is None:
        return _run_qemu(assets, disks, vars_file, serial_log, timeout, extra_args, memory_mib, give_up_on, secure_boot)
    snapshot = "-snapshot" in extra_args  # qemu writes to none of the images: nothing to put back
    for attempt in (1, 2):
        saved = vars_file.with_name(vars_file.name + ".before")
        shutil.copyfile(vars_file, saved)
        overlays = [] if snapshot else [_overlay(disk) for disk in disks]
        finished = False
        try:
            run = _run_qemu(
                assets,
                overlays or disks,
                vars_file,
                serial_log,
                timeout,
                extra_args,
                memory_mib,
                give_up_on,
                secure_boot,
                names=disks,
            )
            finished = True
        except GuestFroze as froze:
            if attempt == 2:
                raise
            print(
                f"esp-mirror CI: {froze}\nthe disks and NVRAM are put back as they were before the boot; "
                "it runs once more",
                file=sys.stderr,
            )
            shutil.copyfile(saved, vars_file)
            again_if_frozen()
        finally:
            saved.unlink(missing_ok=True)
            for overlay in overlays:
                if finished:  # what the boot wrote goes into the raw image; a frozen boot's is dropped
                    run_command(["qemu-img", "commit", "-q", str(overlay)])
                overlay.unlink(missing_ok=True)
        if finished:
            return run
    raise AssertionError("unreachable: the second freeze raised")


def _overlay(disk: Path) -> Path:
    """A qcow2 overlay on ``disk`` (raw): the boot writes there; committed after it, dropped after a freeze."""
    overlay = disk.with_name(f".{disk.name}.boot.qcow2")
    overlay.unlink(missing_ok=True)
    run_command(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(disk.resolve()), str(overlay)])
    return overlay


def _run_qemu(
    assets: Assets,
    disks: Sequence[Path],
    vars_file: Path,
    serial_log: Path,
    timeout: float,
    extra_args: Sequence[str],
    memory_mib: int,
    give_up_on: Mapping[str, str] | None,
    secure_boot: bool,
    names: Sequence[Path] | None = None,
) -> QemuRun:
    """One qemu run (:func:`run_qemu` without the run again); ``names``: the images whose names give
    the disks' serial numbers, when ``disks`` are overlays of them."""
    if "," in str(serial_log):
        raise VmError(f"qemu cannot log to a path with a comma: {serial_log}; choose another directory")
    _check_room([*disks, vars_file])
    code = assets.ovmf_secboot_code if secure_boot else assets.ovmf_code
    argv = [
        "qemu-system-x86_64",
        "-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot",
        "-serial", f"file:{serial_log}",
        "-serial", f"file:{heartbeat_log(serial_log)}",  # ttyS1: the installer initrd's heartbeat
        "-machine", "q35" + (",smm=on" if secure_boot else ""),
        "-accel", os.environ.get("ESP_MIRROR_VM_ACCEL", TCG),
        "-cpu", os.environ.get("ESP_MIRROR_VM_CPU", "max"),
        "-smp", os.environ.get("ESP_MIRROR_VM_SMP", SMP), "-m", str(memory_mib),
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={qemu_option(code)}",
        "-drive", f"if=pflash,format=raw,unit=1,file={qemu_option(vars_file)}",
    ]  # fmt: skip
    if secure_boot:
        argv += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    for index, (disk, name) in enumerate(zip(disks, names or disks, strict=True)):
        drive_id = f"d{index}"
        image = "qcow2" if str(disk).endswith(".qcow2") else "raw"
        argv += [
            "-drive", f"if=none,id={drive_id},format={image},file={qemu_option(disk)}",
            "-device", f"virtio-blk-pci,drive={drive_id},serial={disk_serial(Path(name))}",
        ]  # fmt: skip
    argv += extra_args
    stderr_log = serial_log.with_name(serial_log.stem + ".qemu-stderr")
    started = time.monotonic()
    deadline = started + timeout
    with stderr_log.open("wb") as stderr:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={"PATH": HOST_PATH, "LANG": "C.UTF-8"},
            start_new_session=True,
        )
    heartbeat = _Heartbeat(heartbeat_log(serial_log))
    stall = _Stall(proc.pid, (serial_log, heartbeat_log(serial_log)))
    try:
        while proc.poll() is None:
            _check_serial(serial_log, give_up_on or {})
            why = "no heartbeat" if heartbeat.stopped() else stall.stopped()
            if why:
                _check_not_full([*disks, vars_file], f"the guest stopped ({why} for {FROZEN_AFTER} s)")
                raise GuestFroze(
                    f"the guest froze: {why} for {FROZEN_AFTER} s (qemu or the guest kernel stopped, "
                    f"not a script); serial log: {serial_log}, ending with:\n" + _tail(serial_log)
                )
            if time.monotonic() > deadline:
                _check_not_full([*disks, vars_file], f"qemu did not finish within {timeout:.0f} s")
                raise VmError(
                    f"qemu did not finish within {timeout:.0f} s; serial log: {serial_log}, ending with:\n"
                    + _tail(serial_log)
                )
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=_POLL_SECONDS)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise VmError(
            f"qemu exited {proc.returncode}: {stderr_log.read_text(errors='replace').strip()}; "
            f"serial log: {serial_log}\ncommand: {shlex.join(argv)}"
        )
    return QemuRun(seconds=seconds, serial_log=serial_log)


def _check_room(images: Sequence[Path]) -> None:
    """Refuse a run whose sparse images may grow by more than their file system has free."""
    growth: dict[int, tuple[Path, int]] = {}  # st_dev -> (an image there, what its images may grow by)
    for image in images:
        stat = os.stat(image)
        _, grows = growth.get(stat.st_dev, (image, 0))
        growth[stat.st_dev] = (image, grows + max(0, stat.st_size - stat.st_blocks * 512))
    for image, grows in growth.values():
        free = shutil.disk_usage(image.parent).free
        if free < grows:
            raise VmError(
                f"the guest's disk images in {image.parent} may grow by {grows >> 20} MiB, and their file "
                f"system has {free >> 20} MiB free: qemu would pause the guest when it fills; {_FREE_SOME}"
            )


def _check_not_full(images: Sequence[Path], what: str) -> None:
    """Raise VmError naming the host's full disk if an image's file system is (nearly) full."""
    for image in images:
        free = shutil.disk_usage(image.parent).free
        if free < NEARLY_FULL:
            raise VmError(
                f"{what}: the host's file system holding {image} has {free >> 20} MiB free, and qemu "
                f"pauses a guest whose disk write finds no room (werror=enospc); {_FREE_SOME}"
            )


def heartbeat_log(serial_log: Path) -> Path:
    return serial_log.with_name(serial_log.stem + ".heartbeat")


class _Heartbeat:
    """When the guest last beat (a line with :data:`BEAT_MARKER` on ttyS1). It counts only once the
    installer initrd has started beating: OVMF and GRUB also write their console to that port, and
    an installed system booted to its end never beats."""

    def __init__(self, path: Path) -> None:
        self.path, self.beats, self.beat_at = path, 0, time.monotonic()

    def stopped(self) -> bool:
        beats = self.path.read_bytes().count(BEAT_MARKER.encode()) if self.path.exists() else 0
        if beats != self.beats:
            self.beats, self.beat_at = beats, time.monotonic()
        return self.beats > 0 and time.monotonic() - self.beat_at > FROZEN_AFTER


class _Stall:
    """Whether qemu printed nothing on either serial port and used (almost) no CPU for
    :data:`FROZEN_AFTER` seconds: a frozen guest, whatever it was running (an installed system
    booted from disk has no heartbeat). A guest that computes without printing moves the window on."""

    def __init__(self, pid: int, logs: Sequence[Path]) -> None:
        self.pid, self.logs = pid, logs
        self.mark, self.size, self.cpu = time.monotonic(), self._size(), self._cpu()

    def _size(self) -> int:
        return sum(log.stat().st_size for log in self.logs if log.exists())

    def _cpu(self) -> float:
        """qemu's CPU seconds, every thread (user and system), from /proc/PID/stat."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return self.cpu if hasattr(self, "cpu") else 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stopped(self) -> str:
        """ "" while the guest lives; else what shows it does not."""
        now, size, cpu = time.monotonic(), self._size(), self._cpu()
        if size != self.size:
            self.mark, self.size, self.cpu = now, size, cpu
            return ""
        if now - self.mark < FROZEN_AFTER:
            return ""
        used = cpu - self.cpu
        if used > IDLE_CPU * (now - self.mark):
            self.mark, self.cpu = now, cpu  # busy without output: a window of its own
            return ""
        return f"no serial output and {used:.1f} s of qemu CPU"


def _tail(serial_log: Path, lines: int = 100) -> str:
    """The last ``lines`` lines of the serial log: a CI run keeps no files, so a failure must show them."""
    if not serial_log.exists():
        return "(no serial output)"
    return "\n".join(serial_log.read_text(errors="replace").splitlines()[-lines:])


def _check_serial(serial_log: Path, give_up_on: Mapping[str, str]) -> None:
    """Raise VmError if the serial log shows one of the ``give_up_on`` texts."""
    if not give_up_on:
        return
    text = serial_log.read_text(errors="replace") if serial_log.exists() else ""
    for marker, meaning in give_up_on.items():
        if marker in text:
            raise VmError(f"{meaning} ({marker!r} on the serial port); serial log: {serial_log}")
