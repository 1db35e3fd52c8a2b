"""Install-and-boot scenarios on real firmware, shared by tests/vm and the README demo (ci/demo).

A scenario installs with the real ``esp-mirror apply`` inside a guest (the guest's own root is the
target), collects the resulting state in named sections, then powers on machines that have only
some of the disks and reads from the payload which entry and partition the firmware booted.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ci.vm import Assets, BootResult, GuestResult, boot_firmware, fresh_vars, partition_uuid, run_in_guest
from ci.vm.initrd import GUEST_WORK_DIR
from ci.vm.scripts import esp_mirror_cli, guest_device

SECTION = "@@@ "
# What the guest reports after each apply: the array, its members, the target's files, NVRAM.
STATE_COMMANDS = {
    "detail": "mdadm --detail --export /dev/md/esp",
    "mdstat": "cat /proc/mdstat",
    "fstab": "cat /etc/fstab",
    "mdadm.conf": "cat /etc/mdadm/mdadm.conf",
    "efibootmgr": "efibootmgr -v",
    "members": "for p in {parts}; do blkid -p -o export $p; done",
    "mounts": "grep ' /boot/efi ' /proc/self/mountinfo",
    "record": "cat /etc/esp-mirror/esp-mirror.yaml",
}


def entry_label(serial: str) -> str:
    """The label esp-mirror gives the debian profile's entry for a disk with this serial."""
    return f"Debian (esp-mirror {serial})"


def disk_serial(index: int) -> str:
    return f"espvm-{chr(ord('A') + index)}"


@dataclass(frozen=True)
class Install:
    """One guest run: the apply output(s) and the state sections after each apply."""

    guest: GuestResult
    runs: tuple[dict[str, str], ...]  # per apply: "apply" output and every STATE_COMMANDS section

    @property
    def installed_files(self) -> Path:
        """A tar of the files apply's installed-system group wrote (see :func:`booted_prelude`)."""
        return self.guest.serial_log.parent / "share" / INSTALLED_TAR

    def section(self, name: str, run: int = 0) -> str:
        return self.runs[run][name]


def apply_argv(devices: Sequence[str], efi_image: Path, *extra: str) -> list[str]:
    argv = [str(esp_mirror_cli()), "apply", "--yes", "--profile", "debian"]
    for device in devices:
        argv += ["--disk", device]
    return [*argv, "--bootloader", "efi", "--efi-image", str(efi_image), "--initramfs", "skip", *extra]


def _state_script(run: int, parts: str) -> str:
    return "".join(
        f"echo '{SECTION}{run} {name}'\n{command.format(parts=parts)} 2>&1 || true\n"
        for name, command in STATE_COMMANDS.items()
    )


def install(
    disks: Sequence[Path],
    vars_file: Path,
    efi_image: Path,
    *,
    applies: int = 1,
    assets: Assets | None = None,
    timeout: float = 600,
    extra: Sequence[str] = (),
) -> Install:
    """Run ``esp-mirror apply`` (with ``extra`` options) ``applies`` times in one guest and collect
    the state after each."""
    devices = [guest_device(i) for i in range(len(disks))]
    parts = " ".join(f"{d}1" for d in devices)
    body = ""
    for run in range(applies):
        body += f"echo '{SECTION}{run} apply'\n{shlex.join(apply_argv(devices, efi_image, *extra))} 2>&1\n"
        body += _state_script(run, parts)
    body += _keep_installed_files()
    body += "umount /boot/efi && mdadm --stop /dev/md/esp >&2\n"  # a clean shutdown: no FAT dirty bit
    guest = run_in_guest("set -eu\n" + body, disks, vars_file, timeout=timeout, assets=assets)
    return Install(guest, parse_sections(guest.stdout, applies))


INSTALLED_TAR = "installed-system.tar"


def _keep_installed_files() -> str:
    """Shell lines that tar the files of the installed-system group (the paths `esp-mirror refresh`
    would write) into the share: the next guest boot starts from a fresh overlay without them."""
    paths = (
        'import json, sys; plan = json.load(sys.stdin)["plan"]; '
        'print("\\n".join(s["path"].lstrip("/") for g in plan for s in g["steps"] if "path" in s))'
    )
    return (
        f"{shlex.quote(str(esp_mirror_cli()))} refresh --dry-run --json | {shlex.quote(sys.executable)} -c "
        f"{shlex.quote(paths)} > /tmp/installed.list\n"
        f"tar -C / -cpf {GUEST_WORK_DIR}/{INSTALLED_TAR} -T /tmp/installed.list\n"
    )


def parse_sections(stdout: str, runs: int) -> tuple[dict[str, str], ...]:
    """Split guest output at "@@@ RUN NAME" lines into one dict of sections per apply run."""
    out: list[dict[str, str]] = [{} for _ in range(runs)]
    section: dict[str, str] | None = None
    name = ""
    for line in stdout.splitlines(keepends=True):
        if line.startswith(SECTION):
            run, name = line[len(SECTION) :].strip().split(" ", 1)
            section = out[int(run)]
            section[name] = ""
        elif section is not None:
            section[name] += line
    return tuple(out)


def boot_alone(
    disk: Path,
    nvram_from: Path | None,
    workdir: Path,
    name: str,
    assets: Assets | None = None,
    *,
    secure_boot: bool = False,
    keys: str = "",
) -> BootResult:
    """Power on a machine with only ``disk``: with a copy of ``nvram_from``, or fresh NVRAM
    (with ``keys``, see images.fresh_vars); ``secure_boot``: OVMF's Secure Boot build."""
    vars_file = workdir / f"{name}-vars.fd"
    if nvram_from is None:
        fresh_vars(vars_file, assets, keys=keys)
    else:
        shutil.copyfile(nvram_from, vars_file)
    return boot_firmware([disk], vars_file, assets=assets, log_dir=workdir, secure_boot=secure_boot)


def detail(install_result: Install, run: int = 0) -> dict[str, str]:
    return dict(line.split("=", 1) for line in install_result.section("detail", run).splitlines() if "=" in line)


def esp_lines(fstab: str) -> list[str]:
    return [line for line in fstab.splitlines() if re.search(r"\s/boot/efi\s", line) and not line.startswith("#")]


def image_build_script(efi_image: Path, names: Sequence[str], size_mib: int = 160) -> str:
    """The CI-image case in a guest: image FILES (in the writable share) as disks, no NVRAM.

    The share is 9p, where the initial resync of a 512 MiB member alone takes minutes under TCG,
    so these images carry a 100 MiB ESP (FAT32 needs 33 MiB at 512-byte sectors).
    """
    images = [f"{GUEST_WORK_DIR}/{n}" for n in names]
    argv = [str(esp_mirror_cli()), "apply", "--yes", "--profile", "debian"]
    for image in images:
        argv += ["--disk", image]
    argv += [
        "--target",
        "/tmp/image-root",
        "--bootloader",
        "efi",
        "--efi-image",
        str(efi_image),
        "--initramfs",
        "skip",
        "--no-nvram",
        "--esp-size",
        "100M",
    ]
    return "\n".join(
        [
            "set -eu",
            "mkdir -p /tmp/image-root/etc /tmp/image-root/usr/sbin",
            "cp /usr/sbin/mdadm /tmp/image-root/usr/sbin/  # the image's root has mdadm, which apply asks for",
            *(f"truncate -s {size_mib}M {i}" for i in images),
            f"echo '{SECTION}0 apply'",
            shlex.join(argv) + " 2>&1",
            f"echo '{SECTION}0 losetup'",
            "losetup -a",
            f"echo '{SECTION}0 mdstat'",
            "cat /proc/mdstat",
            f"echo '{SECTION}0 fstab'",
            "cat /tmp/image-root/etc/fstab",
            f"echo '{SECTION}0 efibootmgr'",
            "efibootmgr -v",
            "",
        ]
    )


def image_build(
    efi_image: Path, names: Sequence[str], vars_file: Path, assets: Assets | None = None
) -> tuple[GuestResult, dict[str, str], list[Path]]:
    """Build disk image files inside a guest; return the run, its sections and the host paths."""
    guest = run_in_guest(image_build_script(efi_image, names), [], vars_file, assets=assets)
    share = guest.serial_log.parent / "share"
    return guest, parse_sections(guest.stdout, 1)[0], [share / n for n in names]


__all__ = [
    "Install",
    "apply_argv",
    "boot_alone",
    "detail",
    "disk_serial",
    "entry_label",
    "esp_lines",
    "image_build",
    "install",
    "parse_sections",
    "partition_uuid",
]


def booted_prelude(
    record_text: str, parts: Sequence[str], mountpoint: str = "/boot/efi", installed_files: Path | None = None
) -> str:
    """Shell lines that make a fresh guest look like the installed system after boot: the record
    apply wrote (and the rest of the files its installed-system group wrote, from
    ``installed_files``, :attr:`Install.installed_files`), the array assembled from ``parts`` (udev
    does it on a real boot), the ESP mounted (fstab does). The guest's root is a fresh overlay each
    boot, so /etc starts as the host's."""
    restore = [f"tar -C / -xpf {shlex.quote(str(installed_files))}"] if installed_files else []
    return "\n".join(
        [
            *restore,
            "mkdir -p /etc/esp-mirror",
            f"cat > /etc/esp-mirror/esp-mirror.yaml <<'ESPVM_RECORD'\n{record_text.rstrip()}\nESPVM_RECORD",
            f"mdadm --assemble --run /dev/md/esp {' '.join(parts)} >&2",
            f"mkdir -p {mountpoint}",
            f"mount -t vfat -o umask=0077 /dev/md/esp {mountpoint}",
            "",
        ]
    )


def sections_script(commands: dict[str, str]) -> str:
    """Run each shell command under a "@@@ 0 NAME" header; its exit code and duration follow as
    "rc=N" and "seconds=S" lines (see :func:`outcome`)."""
    return "".join(
        f"echo '{SECTION}0 {name}'\ns=$(date +%s.%N)\n{command} 2>&1; rc=$?\n"
        f'echo "rc=$rc"; echo "seconds=$(awk "BEGIN {{print $(date +%s.%N) - $s}}")"\n'
        for name, command in commands.items()
    )


@dataclass(frozen=True)
class Outcome:
    rc: int
    seconds: float
    output: str


def outcome(section: str) -> Outcome:
    """Split a section of :func:`sections_script` into exit code, duration and output."""
    lines = section.rstrip("\n").split("\n")
    rc, seconds = int(lines[-2].removeprefix("rc=")), float(lines[-1].removeprefix("seconds="))
    return Outcome(rc, seconds, "\n".join(lines[:-2]))
