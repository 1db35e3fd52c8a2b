"""Run a script inside a qemu guest, and boot the firmware alone to see which disk it boots.

``run_in_guest`` boots OVMF + the Debian kernel + the installer initrd. The guest chroots into
the host's own root (read-only over 9p, tmpfs overlay), so a script can call the host's sgdisk,
mdadm, mkfs.vfat, efibootmgr, python3 and the project's venv by their host paths. Disks appear as
/dev/vda, /dev/vdb, ... in the given order, also as /dev/disk/by-id/virtio-espvm-A, -B, ....
efibootmgr writes to the NVRAM file given, so entries persist for ``boot_firmware``.

``boot_firmware`` boots OVMF with nothing but disks and NVRAM; the payload it finds (payload.py)
prints the EFI variables, decoded here into a BootResult.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ci.vm.assets import Assets
from ci.vm.efivars import LoadOption, boot_number, boot_order, load_option, serial_variables, ucs2
from ci.vm.initrd import DONE_MARKER, GUEST_WORK_DIR, HOSTROOT_TAG, WORK_TAG, installer_initrd
from ci.vm.qemu import GuestFroze, QemuRun, VmError, qemu_option, run_qemu

INSTALLER_CMDLINE = "console=ttyS0 panic=-1 loglevel=4"
_BOOT_ENTRY = re.compile(r"Boot[0-9A-F]{4}")
# OVMF's last boot option is its built-in UEFI shell: reaching its prompt means nothing else booted.
_NOTHING_BOOTED = {"Shell> ": "the firmware found nothing to boot and started its UEFI shell"}


@dataclass(frozen=True)
class GuestResult:
    """What a guest script did. ``script_seconds`` is measured inside the guest, ``seconds`` on the host."""

    rc: int
    stdout: str
    stderr: str
    seconds: float
    script_seconds: float
    serial_log: Path


@dataclass(frozen=True)
class BootResult:
    """How the firmware booted the payload, from the EFI variables the payload printed."""

    boot_current: str | None  # "0001" for Boot0001
    boot_order: tuple[str, ...]
    boot_entries: dict[str, LoadOption]  # every Boot#### entry in NVRAM
    loader_device_partuuid: str | None  # set by systemd-stub: the partition it was loaded from
    loader_image_identifier: str | None  # set by systemd-stub: its path on that partition
    seconds: float
    serial_log: Path
    secure_boot: bool | None = None  # the firmware's SecureBoot variable: on, off, or not there

    @property
    def boot_entry(self) -> LoadOption | None:
        """The Boot#### entry the firmware started (BootCurrent)."""
        return self.boot_entries.get(self.boot_current) if self.boot_current else None

    @property
    def boot_entry_description(self) -> str | None:
        return self.boot_entry.description if self.boot_entry else None

    @property
    def boot_entry_partuuid(self) -> str | None:
        return self.boot_entry.partuuid if self.boot_entry else None


def _run_dir(log_dir: Path, kind: str) -> Path:
    """Return a new directory in ``log_dir`` for one qemu run's serial log (and guest share)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"espvm-{kind}-", dir=log_dir))


def run_in_guest(
    script: str,
    disks: Sequence[Path],
    vars_file: Path,
    timeout: float = 600,
    *,
    assets: Assets | None = None,
    log_dir: Path | None = None,
    power_cut: bool = False,
    retry_frozen: bool = True,
) -> GuestResult:
    """Run ``script`` with /bin/sh as root in a guest with ``disks`` attached, and return its result.

    The run's directory in ``log_dir`` is kept: serial.log, the initrd, and share/ with guest.sh
    and its stdout, stderr and rc files (as far as it got, when the guest did not finish).

    :param vars_file: the OVMF NVRAM file; changed in place by efibootmgr in the guest.
    :param log_dir: where the run's directory is made (default: the directory of ``vars_file``).
    :param power_cut: the script resets the machine itself (sysrq ``b``: no sync, no unmount), so
        it never ends: the result has ``rc`` -1 and the output as far as it got.
    :param retry_frozen: a guest that froze runs once more (run_qemu); False: :class:`GuestFroze`
        is raised at once (ci/freezes.py counts them).
    :raises VmError: when the guest did not run the script to the end within ``timeout``.
    """
    assets = assets or Assets.ensure()
    run_dir = _run_dir(log_dir or vars_file.parent, "guest")
    share = _share(run_dir, script)
    initrd = run_dir / "initrd.cpio.gz"
    initrd.write_bytes(installer_initrd(assets))
    # The guest prints what each process waits for a minute before the host gives up (initrd.py).
    dump_at = int(max(timeout - 60, timeout / 2))
    try:
        run = _run_qemu_again_if_frozen(
            assets,
            disks,
            vars_file,
            share,
            timeout,
            [
                "-kernel",
                str(assets.vmlinuz),
                "-initrd",
                str(initrd),
                "-append",
                f"{INSTALLER_CMDLINE} espvm.dump_at={dump_at}",
                *_share_args(share),
            ],
            retry_frozen=retry_frozen,
        )
    except GuestFroze as froze:
        raise GuestFroze(f"{froze}\n{_output_tail(share)}") from None
    except VmError as error:
        raise VmError(f"{error}\n{_output_tail(share)}") from None
    return _guest_result(share, run, power_cut)


def _run_qemu_again_if_frozen(
    assets: Assets,
    disks: Sequence[Path],
    vars_file: Path,
    share: Path,
    timeout: float,
    extra_args: Sequence[str],
    give_up_on: dict[str, str] | None = None,
    retry_frozen: bool = True,
) -> QemuRun:
    """:func:`run_qemu` with the run's serial log beside ``share``; when the guest froze (qemu
    puts the disks and NVRAM back, see run_qemu), the share is emptied but for the script before
    it runs once more."""

    def reset_share() -> None:
        for leftover in share.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover)
            elif leftover.name != "guest.sh":
                leftover.unlink()

    return run_qemu(
        assets,
        disks=disks,
        vars_file=vars_file,
        serial_log=share.parent / "serial.log",
        timeout=timeout,
        extra_args=extra_args,
        give_up_on=give_up_on,
        again_if_frozen=reset_share if retry_frozen else None,
    )


def _output_tail(share: Path, lines: int = 30) -> str:
    """The end of guest.sh's stdout and stderr as far as they got (the share is on the host)."""
    tails = []
    for name in ("stdout", "stderr"):
        text = (share / name).read_text(errors="replace") if (share / name).exists() else ""
        tails.append(f"guest.sh {name}, ending with:\n" + "\n".join(text.splitlines()[-lines:]))
    return "\n".join(tails)


def run_after_firmware_boot(
    script: str,
    disks: Sequence[Path],
    vars_file: Path,
    timeout: float = 600,
    *,
    assets: Assets | None = None,
    log_dir: Path | None = None,
) -> tuple[BootResult, GuestResult]:
    """Power on with only ``disks`` and ``vars_file``, let the firmware boot the payload, then run
    ``script`` on that system as :func:`run_in_guest` does, so the script sees the EFI variables
    of a real firmware boot (BootCurrent, LoaderDevicePartUUID).

    :raises VmError: when nothing booted, or the script did not run to the end within ``timeout``.
    """
    assets = assets or Assets.ensure()
    run_dir = _run_dir(log_dir or vars_file.parent, "booted")
    share = _share(run_dir, script)
    run = _run_qemu_again_if_frozen(
        assets, disks, vars_file, share, timeout, _share_args(share), give_up_on=_NOTHING_BOOTED
    )
    return _boot_result(run.serial_log, run.seconds), _guest_result(share, run)


def _share(run_dir: Path, script: str) -> Path:
    share = run_dir / "share"  # the only host directory the guest can write to
    share.mkdir()
    (share / "guest.sh").write_text(script)
    return share


def _share_args(share: Path) -> list[str]:
    return [
        "-virtfs", f"local,path=/,mount_tag={HOSTROOT_TAG},security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={qemu_option(share)},mount_tag={WORK_TAG},security_model=none,multidevs=remap",
    ]  # fmt: skip


def _guest_result(share: Path, run: QemuRun, power_cut: bool = False) -> GuestResult:
    rc_file = share / "rc"
    if power_cut:
        if rc_file.exists():
            raise VmError(f"guest.sh ended, but it was to cut the power; serial log: {run.serial_log}")
        return GuestResult(
            rc=-1,
            stdout=(share / "stdout").read_text(errors="replace"),
            stderr=(share / "stderr").read_text(errors="replace"),
            seconds=run.seconds,
            script_seconds=run.seconds,
            serial_log=run.serial_log,
        )
    if not rc_file.exists():
        raise VmError(f"the guest powered off before {GUEST_WORK_DIR}/guest.sh ended; serial log: {run.serial_log}")
    start, end = (float(value) for value in (share / "uptime").read_text().split())
    return GuestResult(
        rc=int(rc_file.read_text()),
        stdout=(share / "stdout").read_text(errors="replace"),
        stderr=(share / "stderr").read_text(errors="replace"),
        seconds=run.seconds,
        script_seconds=end - start,
        serial_log=run.serial_log,
    )


def boot_firmware(
    disks: Sequence[Path],
    vars_file: Path,
    timeout: float = 180,
    *,
    assets: Assets | None = None,
    log_dir: Path | None = None,
    secure_boot: bool = False,
    give_up_on: Mapping[str, str] | None = None,
) -> BootResult:
    """Power on a machine with only ``disks`` and the NVRAM ``vars_file``, and report what booted.

    :param secure_boot: OVMF's Secure Boot build (see qemu.run_qemu).
    :param give_up_on: serial output that ends the run as a failure (default: nothing booted).
    :raises VmError: when the payload's marker is not on the serial port before ``timeout``.
    """
    assets = assets or Assets.ensure()
    serial_log = _run_dir(log_dir or vars_file.parent, "boot") / "serial.log"
    run = run_qemu(
        assets,
        disks=disks,
        vars_file=vars_file,
        serial_log=serial_log,
        timeout=timeout,
        give_up_on=_NOTHING_BOOTED if give_up_on is None else give_up_on,
        secure_boot=secure_boot,
        again_if_frozen=lambda: None,
    )
    return _boot_result(serial_log, run.seconds)


def _boot_result(serial_log: Path, seconds: float) -> BootResult:
    """Decode the EFI variables the payload printed on the serial port."""
    variables = serial_variables(serial_log.read_text(errors="replace"))
    if variables is None:
        raise VmError(f"the machine powered off without the payload's {DONE_MARKER} marker; serial log: {serial_log}")

    def text(name: str) -> str | None:
        return ucs2(variables[name]) if name in variables else None

    partuuid = text("LoaderDevicePartUUID")
    return BootResult(
        boot_current=boot_number(variables["BootCurrent"]) if "BootCurrent" in variables else None,
        boot_order=boot_order(variables.get("BootOrder", b"")),
        boot_entries={
            name.removeprefix("Boot"): load_option(data)
            for name, data in variables.items()
            if _BOOT_ENTRY.fullmatch(name)
        },
        loader_device_partuuid=partuuid.lower() if partuuid else None,
        loader_image_identifier=text("LoaderImageIdentifier"),
        secure_boot=variables["SecureBoot"][:1] == b"\x01" if "SecureBoot" in variables else None,
        seconds=seconds,
        serial_log=serial_log,
    )
