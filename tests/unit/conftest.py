"""Shared fixtures for the unit tests: a fake machine, a recording runner and a CLI driver.

Nothing here starts a process or touches the real machine. :class:`Machine` keeps the state of a
pretend host (disks, partitions, mounts, swap, a running array, NVRAM) and shows it to esp-mirror
in the two ways esp-mirror looks at a machine:

- sysfs, /proc and /dev as files under ``tmp_path/host``, read through :class:`FakeHost` (a
  :class:`~esp_mirror_plugin.system.discovery.HostView` that declares which paths are block devices);
- answers to the read-only commands (``blkid -p``, ``sfdisk --json``, ``mdadm --detail --export``,
  ``efibootmgr -v``) from a :class:`~esp_mirror_plugin.system.runner.RecordingRunner` responder, in the
  formats captured from the real tools (see ``data/captured``).

Every other command raises ``UnexpectedCommand`` unless a test calls :meth:`Machine.accept_changes`.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import shutil
import struct
import subprocess
import uuid as _uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from esp_mirror_plugin import cli
from esp_mirror_plugin.cli import install as cli_install
from esp_mirror_plugin.hooks import fstab, installed
from esp_mirror_plugin.pipeline import naming
from esp_mirror_plugin.pipeline.bootloaders import BootloaderKind
from esp_mirror_plugin.pipeline.execute import Applier
from esp_mirror_plugin.pipeline.record import Record
from esp_mirror_plugin.pipeline.request import Request
from esp_mirror_plugin.pipeline.steps import Command, Group
from esp_mirror_plugin.system import lock
from esp_mirror_plugin.system.discovery import HostView
from esp_mirror_plugin.system.files import with_block
from esp_mirror_plugin.system.recording import RecordingRunner, UnexpectedCommand
from esp_mirror_plugin.system.runner import Result, ShRunner, full_argv
from esp_mirror_plugin.upkeep import commands as upkeep_commands
from esp_mirror_plugin.upkeep import settings

DATA = Path(__file__).parent / "data"
MIB = 1024 * 1024
GIB = 1024 * MIB
KVER = "6.1.0-13-amd64"
ESP_TYPE = naming.ESP_TYPE_GUID
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
PROFILES = ("alpine", "arch", "debian", "fedora", "gentoo", "opensuse", "rhel", "ubuntu", "void")
BOOTLOADERS = tuple(k.value for k in BootloaderKind)  # every kind of the table
USER_FSTAB = (
    "# /etc/fstab: static file system information.\n"
    "UUID=0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d /    ext4 errors=remount-ro 0 1\n"
    "UUID=5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9 none swap sw                 0 0\n"
)
# What the target's mdadm.conf looks like right after `apt-get install mdadm` (mkconf, no arrays).
USER_MDADM_CONF = (
    "# mdadm.conf\n#\n# !NB! Run update-initramfs -u after updating this file.\nHOMEHOST <system>\nMAILADDR root\n"
)


TARGET_UNITS = ("raid-check.timer", "mdcheck_start.timer", "mdcheck_continue.timer")
TARGET_OPENRC = ("mdraid", "mdadm-raid", "local")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_processes: this test may start real subprocesses (the wheel test)")


@pytest.fixture(autouse=True)
def _no_real_processes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to start a real process fails the test loudly (as in curtin's unit tests)."""
    if request.node.get_closest_marker("real_processes"):
        return

    def refuse(*args, **kwargs):
        raise UnexpectedCommand(f"a unit test tried to start a real process: {args!r}")

    monkeypatch.setattr(ShRunner, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    for name in ("fork", "posix_spawn", "posix_spawnp", "system"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse)


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No third-party plugins, and one machine architecture whatever host runs the tests.

    ``Request.arch`` defaults to the test host's ``platform.machine()`` and the CLI has no option
    for it, so the CLI's Request is pinned to x86_64 (the golden plans say grubx64/BOOTX64).
    """
    monkeypatch.setenv("ESP_MIRROR_NO_PLUGINS", "1")
    monkeypatch.setattr(cli_install, "Request", functools.partial(Request, arch="x86_64"))
    # the CLI runs as root here, whoever runs the tests, and its lock is the test's own file
    monkeypatch.setattr(cli, "is_root", lambda: True)
    monkeypatch.setattr(lock, "PATH", str(tmp_path_factory.mktemp("lock") / "esp-mirror.lock"))


class FakeHost(HostView):
    """sysfs, /proc and /dev under ``sysroot``; the /dev paths in ``block`` are block devices."""

    def __init__(self, sysroot: Path, block: set[str]) -> None:
        super().__init__(str(sysroot))
        self.block = block
        self.unreadable: set[str] = set()  # paths that cannot be opened (as for a user who is not root)

    def cannot_read(self, path: str) -> str | None:
        return "Permission denied" if path in self.unreadable else super().cannot_read(path)

    def kind(self, path: str) -> str:
        if self.exists(path) and self.realpath(path) in self.block:
            return "block"
        return super().kind(path)


@dataclass
class FakePartition:
    number: int
    start: int  # sectors
    size: int  # sectors
    type_guid: str
    uuid: str
    name: str = ""
    probe: dict[str, str] = field(default_factory=dict)  # blkid -p at the partition's offset
    inner: dict[str, str] = field(default_factory=dict)  # blkid -p -u filesystem (md members)
    files: tuple[str, ...] = ("EFI/debian/grubx64.efi",)  # what mdir lists in its FAT (when it holds one)


@dataclass
class FakeDisk:
    name: str
    path: str  # as esp-mirror sees it (/dev/sda, or /images/a.img for an image file)
    sector: int
    size: int  # bytes
    majmin: str
    pttype: str = ""  # "gpt", "dos" or "" (no table)
    whole: dict[str, str] = field(default_factory=dict)  # blkid -p on the whole disk, besides the table's
    partitions: list[FakePartition] = field(default_factory=list)

    def node(self, number: int) -> str:
        return str(naming.partition_node(self.path, number))

    @property
    def ptuuid(self) -> str:
        """The table's identifier: a GUID for GPT, eight hex digits for DOS (as blkid prints them)."""
        if "PTUUID" in self.whole:
            return self.whole["PTUUID"]
        seed = _uuid.uuid5(_uuid.NAMESPACE_URL, f"test-disk:{self.name}")
        return str(seed) if self.pttype == "gpt" else seed.hex[:8]

    def probe(self) -> dict[str, str]:
        """What ``blkid -p`` finds on the whole disk, as util-linux reports it (see
        data/captured/blkid-p-*-disk.txt): PTUUID and PTTYPE when there is a partition table, then
        any other signature given in ``whole``; nothing at all on a blank disk."""
        assert self.whole.get("PTTYPE", self.pttype) == self.pttype, (
            f"fake {self.path}: whole says PTTYPE={self.whole['PTTYPE']} but the table is {self.pttype!r}"
        )
        table = {"PTUUID": self.ptuuid, "PTTYPE": self.pttype} if self.pttype else {}
        return {**table, **self.whole}


class Machine:
    """A pretend host, its target root and a RecordingRunner that answers for it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sysroot = root / "host"
        self.target = root / "target"
        self.block: set[str] = set()
        self.host = FakeHost(self.sysroot, self.block)
        self.disks: dict[str, FakeDisk] = {}
        self.mountinfo: list[str] = []
        self.swaps: list[str] = []
        self.arrays: dict[str, tuple[str, dict[str, str]]] = {}  # device -> (detail, blkid)
        self.efibootmgr: str | None = None
        self.failures: dict[tuple[str, ...], tuple[int, str]] = {}
        self.runner = RecordingRunner(responders=[self._fail, self._answer])
        self._next_minor: dict[int, int] = {}
        self._loops = 0
        for d in ("dev", "proc/self", "sys/class/block", "sys/firmware/efi/efivars"):
            (self.sysroot / d).mkdir(parents=True, exist_ok=True)
        self.mount("253:0", "/", "ext4", "/dev/mapper/vg0-root")
        self._write_proc()
        (self.target / "etc").mkdir(parents=True)
        (self.target / "etc/fstab").write_text(USER_FSTAB)
        (self.target / "lib/modules" / KVER).mkdir(parents=True)
        for fs in ("proc", "sys", "dev"):  # an installed root has its mount points for chroot
            (self.target / fs).mkdir()
        # what the profiles enable: the distributions' md check timers and OpenRC services
        units = self.target / "usr/lib/systemd/system"
        units.mkdir(parents=True)
        for unit in TARGET_UNITS:  # installed, not enabled: apply enables them
            (units / unit).write_text("[Unit]\n\n[Install]\nWantedBy=timers.target\n")
        self.add_target_python()
        # mdadm among them: a target without it is refused (tests/unit/test_bad_input.py)
        self.add_target_programs(*installed.UPKEEP_PROGRAMS, "debconf-set-selections")
        (self.target / "var/cache/debconf").mkdir(parents=True)  # debconf's database
        (self.target / "etc/init.d").mkdir()
        for service in TARGET_OPENRC:
            (self.target / "etc/init.d" / service).write_text("#!/sbin/openrc-run\n")

    # -- building the machine ------------------------------------------------------------------

    def add_target_programs(self, *names: str, root: Path | None = None) -> None:
        """Executables /usr/sbin/NAME in the target (or ``root``), as its packages would install them."""
        sbin = (root or self.target) / "usr/sbin"
        sbin.mkdir(parents=True, exist_ok=True)
        for name in names:
            (sbin / name).write_text("#!/bin/sh\n")
            (sbin / name).chmod(0o755)

    def add_target_python(self, version: str = "3.11", missing: str = "", root: Path | None = None) -> None:
        """python3 in the target (or ``root``): /usr/bin/python3 -> python{version}, its standard library."""
        root = root or self.target
        (root / "usr/bin").mkdir(parents=True, exist_ok=True)
        binary = root / f"usr/bin/python{version}"
        binary.write_text("")
        binary.chmod(0o755)
        link = root / "usr/bin/python3"
        link.unlink(missing_ok=True)
        link.symlink_to(f"python{version}")
        lib = root / f"usr/lib/python{version}"
        (lib / "json").mkdir(parents=True, exist_ok=True)
        for module in ("os.py", "argparse.py", "dataclasses.py", "subprocess.py", "zipfile.py", "json/__init__.py"):
            if module != missing:
                (lib / module).write_text("")

    def _majmin(self, major: int, step: int = 1) -> str:
        minor = self._next_minor.get(major, 0)
        self._next_minor[major] = minor + step
        return f"{major}:{minor}"

    def _sys(self, name: str) -> Path:
        return self.sysroot / "sys/class/block" / name

    def add_disk(
        self,
        name: str,
        *,
        size: int = 20 * GIB,
        sector: int = 512,
        serial: str | None = None,
        pttype: str = "",
        whole: dict[str, str] | None = None,
        wwid: str | None = None,
        backing_file: str | None = None,
    ) -> FakeDisk:
        """A whole disk /dev/NAME with the sysfs attributes discovery reads."""
        major = 259 if name.startswith("nvme") else 179 if name.startswith("mmcblk") else 8
        disk = FakeDisk(
            name, f"/dev/{name}", sector, size, self._majmin(major, 16 if major == 8 else 1), pttype, dict(whole or {})
        )
        sysdir = self._sys(name)
        (sysdir / "queue").mkdir(parents=True)
        (sysdir / "holders").mkdir()
        (sysdir / "dev").write_text(disk.majmin + "\n")
        (sysdir / "size").write_text(f"{size // 512}\n")
        (sysdir / "queue/logical_block_size").write_text(f"{sector}\n")
        if serial:
            (sysdir / "device").mkdir()
            (sysdir / "device/serial").write_text(f"{serial}\n")
        if wwid:
            (sysdir / "wwid").write_text(f"{wwid}\n")
        if backing_file:  # a loop device: the image file behind it
            (sysdir / "loop").mkdir()
            (sysdir / "loop/backing_file").write_text(f"{backing_file}\n")
        (self.sysroot / "dev" / name).touch()
        self.block.add(disk.path)
        self.disks[disk.path] = disk
        return disk

    def add_image(
        self, name: str, *, size: int = 2 * GIB, pttype: str = "", whole: dict[str, str] | None = None
    ) -> FakeDisk:
        """A disk image file (a sparse regular file) at /images/NAME."""
        path = self.sysroot / "images" / name
        path.parent.mkdir(exist_ok=True)
        with open(path, "wb") as handle:
            handle.truncate(size)
        disk = FakeDisk(name, f"/images/{name}", 512, size, "", pttype, dict(whole or {}))
        self.disks[disk.path] = disk
        return disk

    def add_partition(
        self,
        disk: FakeDisk,
        number: int,
        start: int,
        size: int,
        *,
        type_guid: str = LINUX_TYPE,
        uuid: str | None = None,
        name: str = "",
        probe: dict[str, str] | None = None,
        inner: dict[str, str] | None = None,
        holders: tuple[str, ...] = (),
        files: tuple[str, ...] = ("EFI/debian/grubx64.efi",),
    ) -> str:
        """Partition NUMBER of DISK (in its table, sysfs and /dev); returns its /dev node. ``files``:
        what its FAT holds, when ``probe`` says it is one (``mdir`` lists them)."""
        disk.pttype = disk.pttype or "gpt"
        uuid = uuid or str(_uuid.uuid5(_uuid.NAMESPACE_URL, f"test-partition:{disk.name}:{number}"))
        disk.partitions.append(
            FakePartition(
                number, start, size, type_guid, uuid.upper(), name, dict(probe or {}), dict(inner or {}), tuple(files)
            )
        )
        if disk.majmin:
            node = disk.node(number)
            pname = os.path.basename(node)
            major, minor = disk.majmin.split(":")
            pdir = self._sys(disk.name) / pname
            (pdir / "holders").mkdir(parents=True)
            (pdir / "partition").write_text(f"{number}\n")
            (pdir / "dev").write_text(f"{major}:{int(minor) + number}\n")
            for holder in holders:
                (pdir / "holders" / holder).touch()
            self._sys(pname).symlink_to(f"{disk.name}/{pname}")
            (self.sysroot / "dev" / pname).touch()
            self.block.add(node)
            return node
        return f"{disk.path}{number}"

    def partition_devnum(self, disk: FakeDisk, number: int) -> str:
        major, minor = disk.majmin.split(":")
        return f"{major}:{int(minor) + number}"

    def link(self, link: str, points_to: str) -> None:
        """A relative symlink inside the host tree (e.g. /dev/disk/by-id/X -> ../../sda)."""
        where = self.sysroot / link.lstrip("/")
        where.parent.mkdir(parents=True, exist_ok=True)
        where.symlink_to(os.path.relpath(self.sysroot / points_to.lstrip("/"), where.parent))

    def mount(self, majmin: str, mountpoint: str, fstype: str, source: str) -> None:
        n = 20 + len(self.mountinfo)
        mp = mountpoint.replace(" ", "\\040")
        self.mountinfo.append(f"{n} 1 {majmin} / {mp} rw,relatime shared:{n} - {fstype} {source} rw")
        self._write_proc()

    def set_root(self, majmin: str, source: str, fstype: str = "ext4") -> None:
        """Mount the running root filesystem from MAJMIN (replacing the default, an LVM volume)."""
        self.mountinfo[0] = f"20 1 {majmin} / / rw,relatime shared:1 - {fstype} {source} rw"
        self._write_proc()

    def add_swap(self, device: str) -> None:
        self.swaps.append(device)
        self._write_proc()

    def _write_proc(self) -> None:
        (self.sysroot / "proc/self/mountinfo").write_text("".join(f"{line}\n" for line in self.mountinfo))
        swaps = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
        swaps += "".join(f"{d}                               partition\t8388604\t\t0\t\t-2\n" for d in self.swaps)
        (self.sysroot / "proc/swaps").write_text(swaps)

    def set_efivars(self, present: bool = True, efibootmgr: str | None = None) -> None:
        var = self.sysroot / "sys/firmware/efi/efivars/BootOrder-8be4df61-93ca-11d2-aa0d-00e098032b8c"
        if present:
            var.write_bytes(b"\x07\x00\x00\x00\x04\x00")
        elif var.exists():
            var.unlink()
        self.efibootmgr = efibootmgr

    def secure_boot(self, on: bool, setup_mode: bool | None = None) -> None:
        """The firmware's SecureBoot (and SetupMode) variables: attributes, then one byte."""
        efivars = self.sysroot / "sys/firmware/efi/efivars"
        (efivars / f"SecureBoot-{EFI_GLOBAL}").write_bytes(b"\x06\x00\x00\x00" + bytes([on]))
        if setup_mode is not None:
            (efivars / f"SetupMode-{EFI_GLOBAL}").write_bytes(b"\x06\x00\x00\x00" + bytes([setup_mode]))

    def add_array(
        self,
        device: str,
        kernel_name: str,
        *,
        uuid: str,
        members: tuple[str, ...],
        fs: dict[str, str] | None = None,
        level: str = "raid1",
    ) -> None:
        """A running md array: /dev/md/NAME -> ../mdN, with mdadm --detail --export and blkid answers."""
        kernel = f"/dev/{kernel_name}"
        (self.sysroot / kernel.lstrip("/")).touch()
        md = self.sysroot / "sys/block" / kernel_name / "md"
        md.mkdir(parents=True, exist_ok=True)
        for key, value in (("sync_action", "idle"), ("array_state", "clean")):
            if not (md / key).exists():
                (md / key).write_text(f"{value}\n")
        self.link(device, kernel)
        detail = [
            f"MD_LEVEL={level}",
            f"MD_DEVICES={len(members)}",
            "MD_METADATA=1.0",
            f"MD_UUID={uuid}",
            f"MD_DEVNAME={os.path.basename(device)}",
            f"MD_NAME=any:{os.path.basename(device)}",
        ]
        for role, member in enumerate(members):
            key = member.replace("/", "_")
            detail += [f"MD_DEVICE{key}_ROLE={role}", f"MD_DEVICE{key}_DEV={member}"]
        self.arrays[device] = ("\n".join(detail) + "\n", dict(fs or {}))

    def fail(self, prefix: tuple[str, ...], returncode: int = 1, stderr: str = "") -> None:
        """Make every command starting with ``prefix`` (chroot prefix included) fail."""
        self.failures[prefix] = (returncode, stderr)

    def accept_changes(self) -> None:
        """Let every changing command succeed, as on a machine where all goes well.

        ``losetup --find --show`` prints a loop device under tmp_path, and ``sgdisk --new`` creates
        the partition node next to it, so the Applier's wait for the node sees it appear.
        """
        self.runner.responders.append(self._succeed)

    # -- answering commands --------------------------------------------------------------------

    def _fail(self, argv: tuple[str, ...]) -> Result | None:
        for prefix, (returncode, stderr) in self.failures.items():
            if argv[: len(prefix)] == prefix:
                return Result(argv, returncode, "", stderr)
        return None

    def _succeed(self, argv: tuple[str, ...]) -> Result | None:
        if argv[:3] == ("losetup", "--find", "--show"):
            self._loops += 1
            loop = self.root / "dev" / f"loop{self._loops}"
            loop.parent.mkdir(exist_ok=True)
            loop.touch()
            return Result(argv, 0, f"{loop}\n")
        if argv[0] == "sgdisk" and argv[1].startswith("--new="):
            node = naming.partition_node(argv[-1], 1)
            if node.startswith(str(self.root)):
                Path(node).touch()
        if argv[:2] in (("mdadm", "--create"), ("mdadm", "--assemble")):  # md's sysfs, resync done
            self.started_array(argv[2])
        return Result(argv, 0)

    def started_array(self, device: str, **attrs: str) -> None:
        """What md shows of a running array (default: in sync, idle), as the Applier's wait reads
        it; nothing else of the array is played (a second plan sees the disks as they were)."""
        kernel_name = os.path.basename(os.path.realpath(self.sysroot / device.lstrip("/")))
        md = self.sysroot / "sys/block" / kernel_name / "md"
        md.mkdir(parents=True, exist_ok=True)
        values = {
            "sync_action": "idle",
            "sync_completed": "none",
            "array_state": "clean",
            "resync_start": "none",
            **attrs,
        }
        for key, value in values.items():
            (md / key).write_text(f"{value}\n")

    def _answer(self, argv: tuple[str, ...]) -> Result | None:
        match argv:
            case ("blkid", "-p", "-o", "export", path) if path in self.disks:
                return _export(argv, {"DEVNAME": path, **self.disks[path].probe()})
            case ("blkid", "-p", "-o", "export", path) if path in self.arrays:
                return _export(argv, {"DEVNAME": path, **self.arrays[path][1]})
            case ("blkid", "-p", *opts, "-o", "export", "-O", offset, "-S", size, path) if path in self.disks:
                part = self._at(self.disks[path], int(offset), int(size))
                values = part.inner if opts == ["-u", "filesystem"] else part.probe if not opts else None
                if values is None:
                    return None
                return _export(argv, {"DEVNAME": path, **values})
            case ("mdir", "-/", "-b", "-i", where, "::/") if where.split("@@")[0] in self.disks:
                path, _, offset = where.partition("@@")
                disk = self.disks[path]
                part = next(p for p in disk.partitions if p.start * disk.sector == int(offset or 0))
                if part.probe.get("TYPE") != "vfat":
                    return Result(argv, 1, "", "init: non DOS media\nCannot initialize '::'\n")
                if not part.files:
                    return Result(argv, 1, "", 'mdir: File "::/" not found\n')
                listed = sorted(
                    {f"::/{'/'.join(f.split('/')[:n])}/" for f in part.files for n in range(1, f.count("/") + 1)}
                )
                return Result(argv, 0, "".join(f"{line}\n" for line in [*listed, *(f"::/{f}" for f in part.files)]))
            case ("sfdisk", "--json", path) if path in self.disks:
                return self._sfdisk(argv, self.disks[path])
            case ("mdadm", "--detail", "--export", device) if device in self.arrays:
                return Result(argv, 0, self.arrays[device][0])
            case ("efibootmgr", "-v") if self.efibootmgr is not None:
                return Result(argv, 0, self.efibootmgr)
        return None

    @staticmethod
    def _at(disk: FakeDisk, offset: int, size: int) -> FakePartition:
        part = next(p for p in disk.partitions if p.start * disk.sector == offset)
        assert part.size * disk.sector == size, "blkid probed a partition with the wrong size"
        return part

    @staticmethod
    def _sfdisk(argv: tuple[str, ...], disk: FakeDisk) -> Result:
        """sfdisk --json in the layout util-linux 2.38 prints (see data/captured/sfdisk-json-*)."""
        if not disk.pttype:
            return Result(argv, 1, "", f"sfdisk: {disk.path}: does not contain a recognized partition table\n")
        parts = []
        for p in disk.partitions:
            entry = {"node": disk.node(p.number), "start": p.start, "size": p.size}
            if disk.pttype == "gpt":
                entry |= {"type": p.type_guid, "uuid": p.uuid, **({"name": p.name} if p.name else {})}
            else:
                entry["type"] = "83"
            parts.append(entry)
        table_id = disk.ptuuid.upper() if disk.pttype == "gpt" else f"0x{disk.ptuuid}"
        table = {
            "label": disk.pttype,
            "id": table_id,
            "device": disk.path,
            "unit": "sectors",
            "firstlba": 34,
            "lastlba": disk.size // disk.sector - 34,
            "sectorsize": disk.sector,
            "partitions": parts,
        }
        return Result(argv, 0, json.dumps({"partitiontable": table}, indent=3) + "\n")

    # -- looking at the outcome ----------------------------------------------------------------

    def target_state(self) -> dict[str, tuple[int, bytes | str]]:
        """Every file, directory and link under the target with its mode and content."""
        state = {}
        for path in sorted(self.target.rglob("*")):
            st = path.lstat()
            content = os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else b""
            state[str(path.relative_to(self.target))] = (st.st_mode, content)
        return state

    def disk_args(self, *disks: str) -> list[str]:
        return [arg for d in disks for arg in ("--disk", d)]

    def args(self, *disks: str) -> list[str]:
        """--disk for each disk (default: every disk added, in order) and --target."""
        return [*self.disk_args(*(disks or tuple(self.disks))), "--target", str(self.target)]

    def cli(self, *argv: str, stdin: io.StringIO | None = None) -> Outcome:
        """Run ``esp-mirror ARGV`` against this machine; a RecordingRunner is given, so no root check."""
        out, err = io.StringIO(), io.StringIO()
        before = len(self.runner.calls)
        code = cli.main(
            list(argv), out=out, err=err, runner=self.runner, host_view=self.host, stdin=stdin or io.StringIO()
        )
        return Outcome(code, out.getvalue(), err.getvalue(), self.runner.calls[before:])

    def normalize(self, text: str) -> str:
        """Output with this test's tmp dir written as @TMP@, the plan digest (which covers that path)
        as @DIGEST@, esp-mirror's zip application as @ZIPAPP@, its manual page as @MANPAGE@ and its
        bash completion as @COMPLETION@ (whose bytes tests/unit/test_manpage.py and
        test_completion.py check), for comparison with fixed files."""
        text = re.sub(r"\bdigest [0-9a-f]{64}\b", "digest @DIGEST@", text.replace(str(self.root), "@TMP@"))
        # the zip application's contents (versions of the packages in this venv), size and checksum
        zipapp = r"zip application \(.*?\), (.*?); \d+ bytes, sha256 [0-9a-f]{64}"
        text = re.sub(zipapp, r"zip application (@ZIPAPP@), \1", text)
        text = re.sub(
            r"manual page esp-mirror\(8\) \(.*?\); \d+ bytes, sha256 [0-9a-f]{64}",
            "manual page esp-mirror(8) (@MANPAGE@)",
            text,
        )
        return re.sub(  # the bash completion, whose bytes tests/unit/test_completion.py checks
            r"bash completion of esp-mirror \(.*?\); \d+ bytes, sha256 [0-9a-f]{64}",
            "bash completion of esp-mirror (@COMPLETION@)",
            text,
        )


def _export(argv: tuple[str, ...], values: dict[str, str]) -> Result:
    """blkid -o export: exit code 2 and no output when it found nothing but DEVNAME."""
    if set(values) == {"DEVNAME"}:
        return Result(argv, 2)
    return Result(argv, 0, "".join(f"{k}={v}\n" for k, v in values.items()))


class ToolsExcept:
    """For ``RecordingRunner.tools``: every program is installed except ``missing``."""

    def __init__(self, *missing: str) -> None:
        self.missing = set(missing)

    def __contains__(self, tool: str) -> bool:
        return tool not in self.missing


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    calls: list[tuple[str, ...]]

    @property
    def error(self) -> str:
        """The error message without the program prefix; asserts it is exactly one line."""
        assert self.err.endswith("\n") and self.err.count("\n") == 1, f"not one line: {self.err!r}"
        assert self.err.startswith("esp-mirror: error: "), self.err
        return self.err[len("esp-mirror: error: ") :].rstrip("\n")


# -- what counts as looking, not changing ----------------------------------------------------


def is_read_only(argv: tuple[str, ...]) -> bool:
    """The commands discovery may run: probes that change nothing."""
    match argv:
        case ("blkid", "-p", *_):
            return "-o" in argv and "export" in argv
        case (
            ("sfdisk", "--json", _)
            | ("mdadm", "--detail" | "--examine", "--export", _)
            | ("efibootmgr", "-v")
            | ("fsck.fat", "-n", _)
            | ("blockdev", "--flushbufs", _)
            | ("mcopy", "-n", "-i", _, *_)
            | ("mdir", "-/", "-b", "-i", _, "::/")
        ):
            return True
    return False


def assert_only_read(calls: list[tuple[str, ...]]) -> None:
    changing = [c for c in calls if not is_read_only(c)]
    assert changing == [], f"commands that change the machine ran: {changing}"


# -- reading plans ---------------------------------------------------------------------------


def commands(groups: list[Group], group: str | None = None) -> list[tuple[str, ...]]:
    """The argv (as planned, chroot prefix included, Vars rendered) of every Command step."""
    out = []
    for g in groups:
        if group is None or g.name == group:
            out += [
                tuple(a if isinstance(a, str) else a.render() for a in full_argv(s.argv, s.root))
                for s in g.steps
                if isinstance(s, Command)
            ]
    return out


def plan_of(machine: Machine, *argv: str) -> dict:
    """``esp-mirror plan --json`` on ``machine`` (its disks and target, then ``argv``), which must succeed."""
    outcome = machine.cli("plan", "--json", *machine.args(), *argv)
    assert outcome.code == 0, outcome.err
    return json.loads(outcome.out)


@pytest.fixture(params=PROFILES)
def profile(request: pytest.FixtureRequest) -> str:
    """Each built-in profile in turn."""
    return str(request.param)


def json_commands(plan: dict, group: str | None = None) -> list[tuple[str, ...]]:
    """Like :func:`commands`, from ``plan --json`` output (with the loads of debconf answers, which
    run unless the target's debconf database holds them already)."""
    return [
        tuple(s["argv"] if s["kind"] == "command" else s["load"]["argv"])
        for g in plan["groups"]
        if group is None or g["name"] == group
        for s in g["steps"]
        if s["kind"] in ("command", "load-debconf")
    ]


def starting(cmds: list[tuple[str, ...]], *prefix: str) -> list[tuple[str, ...]]:
    return [c for c in cmds if c[: len(prefix)] == prefix]


def bootorder_after(order: tuple[str, ...], cmds: list[tuple[str, ...]]) -> tuple[str, ...]:
    """BootOrder after running the efibootmgr commands in ``cmds`` (others are ignored), the way
    efibootmgr 17/18 change it (src/efibootmgr.c): ``--delete-bootnum`` removes every occurrence of
    the number (remove_from_order), ``--create`` puts the new number in front without looking at
    what is there (add_to_order), ``--bootorder`` replaces the whole order.

    Written from efibootmgr's source, not from esp-mirror's, so plans are checked against the tool.
    """
    result = list(order)
    for argv in cmds:
        if argv[:1] != ("efibootmgr",):
            continue
        if "--bootorder" in argv:
            result = argv[argv.index("--bootorder") + 1].split(",")
        elif "--delete-bootnum" in argv:
            number = argv[argv.index("--bootnum") + 1]
            result = [n for n in result if n != number]
        elif "--create" in argv:
            result.insert(0, argv[argv.index("--bootnum") + 1])
    return tuple(result)


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    """An empty pretend host: no disks, no EFI variables, a target with one kernel."""
    return Machine(tmp_path)


def equip_two_disks(machine: Machine) -> Machine:
    """Two blank 20 GiB SATA disks, EFI variables with an OVMF + Debian NVRAM, a fresh target."""
    machine.add_disk("sda", serial="WD-WCC4N0AAAAAA")
    machine.add_disk("sdb", serial="WD-WCC4N0BBBBBB")
    machine.set_efivars(efibootmgr=(DATA / "efibootmgr/v17-ovmf-debian.txt").read_text())
    (machine.target / "etc/mdadm").mkdir()
    (machine.target / "etc/mdadm/mdadm.conf").write_text(USER_MDADM_CONF)
    return machine


def make_efi_image(root: Path) -> Path:
    """A stand-in EFI binary (a unified kernel image) for --bootloader efi / zfsbootmenu."""
    path = root / "payload" / "linux.efi"
    path.parent.mkdir()
    path.write_bytes(b"MZ\x90\x00fake unified kernel image\n")
    return path


@pytest.fixture
def images(machine: Machine) -> Machine:
    """Two image files on which apply succeeds (loop devices and partition nodes appear)."""
    machine.add_image("a.img")
    machine.add_image("b.img")
    (machine.target / "etc/mdadm").mkdir()
    machine.set_efivars(efibootmgr="unused: image files get no NVRAM entries\n")
    machine.accept_changes()
    return machine


@pytest.fixture
def two_disks(machine: Machine) -> Machine:
    """Two blank 20 GiB SATA disks, EFI variables with an OVMF + Debian NVRAM, a fresh target."""
    return equip_two_disks(machine)


@pytest.fixture
def efi_image(tmp_path: Path) -> Path:
    return make_efi_image(tmp_path)


# -- EFI images (PE/COFF), built by hand ---------------------------------------------------------


def der_cn(name: str, tag: int = 0x0C) -> bytes:
    """DER of a commonName attribute: OID 2.5.4.3, then a string (UTF8String unless ``tag`` says)."""
    value = name.encode()
    return b"\x30" + bytes([len(value) + 7]) + b"\x06\x03\x55\x04\x03" + bytes([tag, len(value)]) + value


def pkcs7(*names: str) -> bytes:
    """A stand-in PKCS#7 SignedData blob: a SEQUENCE header, then the names' DER commonNames as the
    signer's and its issuer's certificates carry them."""
    return b"\x30\x82\x00\x00\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02" + b"".join(der_cn(n) for n in names)


def make_pe(signed_by: tuple[str, ...] | None = None, *, plus: bool = True, code: bytes = b"\xc3" * 16) -> bytes:
    """A tiny PE image (PE32+ unless ``plus`` is False): DOS stub, PE header, an optional header
    with 16 data directories, ``code``; with ``signed_by``, a WIN_CERTIFICATE (PKCS signed data)
    holding :func:`pkcs7` of those names at the file offset directory 4 names."""
    dos = bytearray(64)
    dos[:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 64)
    directories = 112 if plus else 96
    optional = bytearray(directories + 16 * 8)
    struct.pack_into("<H", optional, 0, 0x20B if plus else 0x10B)
    struct.pack_into("<I", optional, directories - 4, 16)
    coff = struct.pack("<HHIIIHH", 0x8664, 0, 0, 0, 0, len(optional), 0x22)
    body = bytes(dos) + b"PE\0\0" + coff
    image = body + bytes(optional) + code
    image += b"\0" * (-len(image) % 8)
    if signed_by is None:
        return image
    blob = pkcs7(*signed_by)
    entry = struct.pack("<IHH", 8 + len(blob), 0x0200, 0x0002) + blob
    entry += b"\0" * (-len(entry) % 8)
    struct.pack_into("<II", optional, directories + 8 * 4, len(image), len(entry))
    return body + bytes(optional) + image[len(body) + len(optional) :] + entry


# -- an installed mirror after boot, for the upkeep commands ------------------------------------

ARRAY_UUID = "a2824bdc:e2f95aef:83df651f:bf2ea709"  # `mdadm --detail --export /dev/md/esp` in the VM
GRUB_LOADER = "\\EFI\\debian\\grubx64.efi"
EFI_GLOBAL = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
LOADER_VENDOR = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
UIAPP = "FvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(462caa21-7614-4503-836e-8ab6f4662331)"
SHELL = "FvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(7c04a583-9e3e-4f1c-ad65-e05268d0b4d1)"
ESP_FILES = {
    "EFI/BOOT/BOOTX64.EFI": b"MZ grub (removable path)\n",
    "EFI/debian/grubx64.efi": b"MZ grub\n",
    "EFI/debian/grub.cfg": b"search.fs_uuid 0a1b2c3d root\n",
}
FAT_MTIME = 1_700_000_000  # mcopy -m keeps the FAT's times: one fixed time keeps --json output stable
FSCK_CLEAN = "fsck.fat 4.2 (2021-01-31)\n{node}: 6 files, 5174/130796 clusters\n"
# `fsck.fat -n` on a member of a mounted ESP (dosfstools 4.2, captured in the VM): exit code 1.
FSCK_DIRTY = """\
fsck.fat 4.2 (2021-01-31)
There are differences between boot sector and its backup.
This is mostly harmless. Differences: (offset:original/backup)
  65:01/00
  Not automatically fixing this.
Dirty bit is set. Fs was not properly unmounted and some data may be corrupt.
 Automatically removing dirty bit.

Leaving filesystem unchanged.
{node}: 6 files, 5174/130796 clusters
"""


def serial_of(name: str) -> str:
    """The VM harness's disk serials: vda -> espvm-A (ci.scenarios.disk_serial)."""
    return f"espvm-{name[-1].upper()}"


def guid_of(name: str) -> str:
    """The partition GUID apply gives disk NAME's ESP (from the disk's serial)."""
    return naming.partition_guid(f"serial:{serial_of(name)}")


def hd_path(guid: str, loader: str = GRUB_LOADER) -> str:
    return f"HD(1,GPT,{guid},0x800,0x100000)/File({loader})"


def efibootmgr_create(
    number: str, disk: str, tag: str, loader: str = GRUB_LOADER, label: str = "Debian"
) -> tuple[str, ...]:
    """The exact argv with which esp-mirror makes the boot entry of one member disk."""
    head = ("efibootmgr", "--quiet", "--create", "--bootnum", number, "--disk", disk, "--part", "1")
    return (*head, "--label", f"{label} (esp-mirror {tag})", "--loader", loader)


class Mirror(Machine):
    """The installed system after boot, as the VM tests see it (tests/vm/test_upkeep.py).

    Disks /dev/vda, /dev/vdb, ... (1 GiB, serials espvm-A, espvm-B, ...) each hold partition 1
    (512 MiB at 1 MiB, our GUID), a member of /dev/md/esp -> md127 (metadata 1.0, slot = disk
    order). The array is mounted at the record's mount point ``self.esp`` (/boot/efi, whose files are
    in the real directory ``self.esp_dir`` under
    tmp_path: status looks for the loader file there). NVRAM holds UiApp, one entry of ours per
    disk and the EFI shell; the record apply wrote is in the host's /etc/esp-mirror.

    Besides Machine's answers it answers ``blkid -p`` of a member partition, md's sysfs under
    /sys/block/md127/md, and the member reads of check/repair (blockdev --flushbufs, mdir,
    mcopy, fsck.fat -n) from ``self.members`` (node -> files) and ``self.fsck``.
    :meth:`accept_changes` also plays md, mount and efibootmgr, so a repair leaves a consistent state.
    """

    def __init__(self, root: Path, disks: tuple[str, ...] = ("vda", "vdb")) -> None:
        super().__init__(root)
        self.esp = "/boot/efi"
        self.esp_dir = self.sysroot / "boot/efi"
        self.md = self.sysroot / "sys/block/md127/md"
        self.udev = True  # udev removes /dev/md/esp when the array stops
        self.record = Record(
            profile="debian",
            array="/dev/md/esp",
            mountpoint=self.esp,
            loader=GRUB_LOADER,
            entry_label="Debian",
            esp_start=MIB,
            esp_size=512 * MIB,
            members=len(disks),
        )
        self.members: dict[str, dict[str, bytes]] = {}
        self.superblocks: dict[str, dict[str, str]] = {}  # node -> mdadm --examine --export
        self.raid_probes: dict[str, dict[str, str]] = {}  # node -> blkid -p as it was before its superblock went
        self.readd: set[str] = set()  # nodes md takes back with --re-add (it has a bitmap for them)
        self.fsck: dict[str, tuple[int, str]] = {}
        self.boot_entries: list[tuple[str, str, str, bool]] = []  # (number, label, device path, active)
        self.boot_order: list[str] = []
        self.runner.responders.append(self._upkeep)
        nodes = [self._member_disk(name, slot) for slot, name in enumerate(disks)]
        self.start_array(nodes, mount=False)
        self.mount("9:127", self.esp, "vfat", "/dev/md127")
        for path, data in ESP_FILES.items():
            (self.esp_dir / path).parent.mkdir(parents=True, exist_ok=True)
            (self.esp_dir / path).write_bytes(data)
        self.boot_entries = [("0000", "UiApp", UIAPP, True)]
        self.boot_entries += [
            (f"{n:04X}", f"Debian (esp-mirror {serial_of(name)})", hd_path(guid_of(name)), True)
            for n, name in enumerate(disks, start=1)
        ]
        self.boot_entries.append((f"{len(disks) + 1:04X}", "EFI Internal Shell", SHELL, True))
        self.boot_order = [e[0] for e in self.boot_entries[1:-1]] + ["0000", f"{len(disks) + 1:04X}"]
        self._nvram_changed()
        (self.sysroot / "etc/esp-mirror").mkdir(parents=True)
        (self.sysroot / "etc/esp-mirror/esp-mirror.yaml").write_text(self.record.render())
        self.add_target_python(root=self.sysroot)
        self.write_installed_settings()
        self.write_array_files()

    def write_installed_settings(self) -> None:
        """The files of apply's "installed-system" group (esp-mirror itself, heal units, the debconf
        answers), as apply left them on the installed system."""
        steps, _ = installed.plan(settings.setup(self.record, ARRAY_UUID, str(self.sysroot)))
        applier = Applier(self.runner, io.StringIO())
        for step in steps:
            if not isinstance(step, Command):
                applier.execute(Group("installed-system", (step,)))

    def start_array(self, nodes: list[str], mount: bool = True) -> None:
        """/dev/md/esp running (md127) with ``nodes`` in slot order, in sync, each partition held by
        it; with ``mount`` the ESP mounted from it, as fstab does at boot."""
        self.add_array(
            "/dev/md/esp",
            "md127",
            uuid=ARRAY_UUID,
            members=tuple(nodes),
            fs={"UUID": "C982-96CB", "VERSION": "FAT32", "LABEL": "ESP", "TYPE": "vfat"},
        )
        detail = [
            "MD_LEVEL=raid1",
            f"MD_DEVICES={len(nodes)}",
            "MD_METADATA=1.0",
            f"MD_UUID={ARRAY_UUID}",
            "MD_DEVNAME=esp",
            "MD_NAME=any:esp",
        ]
        for role, node in reversed(list(enumerate(nodes))):  # as mdadm 4.2 printed them
            key = node.replace("/", "_")
            detail += [f"MD_DEVICE{key}_ROLE={role}", f"MD_DEVICE{key}_DEV={node}"]
        self.arrays["/dev/md/esp"] = ("\n".join(detail) + "\n", self.arrays["/dev/md/esp"][1])
        self.set_md(
            array_state="clean",
            degraded=0,
            sync_action="idle",
            sync_completed="none",
            mismatch_cnt=0,
            raid_disks=len(nodes),
        )
        for slot, node in enumerate(nodes):
            self.set_member(node, "in_sync", slot)
            (self._sys(os.path.basename(node)) / "holders" / "md127").touch()
        if mount:
            self.mount("9:127", self.esp, "vfat", "/dev/md127")

    def write_array_files(self) -> None:
        """fstab and mdadm.conf of the installed system as apply left them: the user's lines and
        esp-mirror's blocks (the ARRAY line and the monitor's address; the mount by the FAT's UUID)."""
        etc = self.sysroot / "etc"
        (etc / "mdadm").mkdir(parents=True, exist_ok=True)
        array = f"ARRAY /dev/md/esp metadata=1.0 UUID={ARRAY_UUID} name=any:esp"
        (etc / "mdadm/mdadm.conf").write_text(
            with_block(USER_MDADM_CONF.replace("MAILADDR root\n", ""), f"{array}\nMAILADDR root")
        )
        (etc / "fstab").write_text(with_block(USER_FSTAB, fstab.line("C982-96CB", self.esp)))

    # -- building the state ----------------------------------------------------------------------

    def _member_disk(self, name: str, slot: int) -> str:
        disk = self.add_disk(name, size=GIB, serial=serial_of(name))
        node = self.add_partition(
            disk,
            1,
            2048,
            512 * MIB // 512,
            type_guid=ESP_TYPE,
            uuid=guid_of(name),
            name=naming.PARTITION_NAME,
            probe={
                "UUID": str(_uuid.UUID(ARRAY_UUID.replace(":", ""))),
                "LABEL": "any:esp",
                "VERSION": "1.0",
                "TYPE": "linux_raid_member",
                "USAGE": "raid",
            },
            inner={"LABEL": "ESP", "UUID": "C982-96CB", "VERSION": "FAT32", "TYPE": "vfat", "USAGE": "filesystem"},
            holders=("md127",),
        )
        self.set_member(node, "in_sync", slot)
        self.members[node] = dict(ESP_FILES)
        self.superblocks[node] = superblock(ARRAY_UUID, events=120)
        return node

    def kick(self, node: str, events: int = 100) -> None:
        """md left ``node`` out ("kicking non-fresh"): not in the array, nothing holds the partition,
        its superblock still names the array, with the event count it had when it went away."""
        self.take_out(node)
        self.superblocks[node] = superblock(ARRAY_UUID, events=events)

    def set_md(self, **attrs: object) -> None:
        """md's sysfs attributes of the array (array_state, degraded, sync_action, ...)."""
        self.md.mkdir(parents=True, exist_ok=True)
        for key, value in attrs.items():
            (self.md / key).write_text(f"{value}\n")

    def md_attr(self, key: str) -> str:
        return (self.md / key).read_text().strip()

    def set_member(self, node: str, state: str, slot: int | None) -> None:
        """/sys/block/md127/md/dev-NAME/{state,slot} of a member (slot None: a spare)."""
        where = self.md / f"dev-{os.path.basename(node)}"
        where.mkdir(parents=True, exist_ok=True)
        (where / "state").write_text(f"{state}\n")
        (where / "slot").write_text(f"{'none' if slot is None else slot}\n")

    def _slot(self, node: str) -> int | None:
        slot = (self.md / f"dev-{os.path.basename(node)}/slot").read_text().strip()
        return int(slot) if slot.isdigit() else None

    def member_nodes(self) -> list[str]:
        return sorted(f"/dev/{d.name[4:]}" for d in self.md.glob("dev-*"))

    def take_out(self, node: str) -> None:
        """What `mdadm /dev/md/esp --fail NODE --remove NODE` leaves: one member fewer, degraded, and
        the partition held by nothing (its superblock still names the array: heal takes it back)."""
        for path in sorted((self.md / f"dev-{os.path.basename(node)}").iterdir()):
            path.unlink()
        (self.md / f"dev-{os.path.basename(node)}").rmdir()
        holders = self._sys(os.path.basename(node)) / "holders"
        for holder in holders.iterdir() if holders.is_dir() else ():
            holder.unlink()
        self.set_md(degraded=int(self.md_attr("degraded")) + 1, array_state="clean")

    def lose_disk(self, name: str) -> None:
        """Disk NAME died and was pulled: gone from the machine and from the array."""
        disk = self.disks.pop(f"/dev/{name}")
        node = disk.node(1)
        self.take_out(node)
        self.members.pop(node)
        self.block.difference_update({disk.path, node})
        shutil.rmtree(self._sys(name))
        (self._sys(os.path.basename(node))).unlink()
        for dev in (disk.path, node):
            (self.sysroot / dev.lstrip("/")).unlink()

    def add_new_disk(self, name: str, serial: str | None = None, **kwargs) -> FakeDisk:
        """A new disk for replace/add: blank and 1 GiB unless told otherwise, a VM-style serial."""
        kwargs.setdefault("size", GIB)
        return self.add_disk(name, serial=serial or serial_of(name), **kwargs)

    def stop_array(self) -> None:
        """The array is not assembled (and so not mounted): as on a system booted without it. Without
        ``self.udev`` (a rescue system) the node and mdadm's /dev/md/esp link outlive the array."""
        if self.udev:
            (self.sysroot / "dev/md/esp").unlink()
        del self.arrays["/dev/md/esp"]
        shutil.rmtree(self.md.parent)
        self.mountinfo = [line for line in self.mountinfo if " 9:127 " not in line]
        self._write_proc()

    def boot(self, number: str | None = None, loader_partuuid: str | None = None) -> None:
        """The EFI variables of this boot: BootCurrent (u16) and systemd's LoaderDevicePartUUID."""
        efivars = self.sysroot / "sys/firmware/efi/efivars"
        if number is not None:
            (efivars / f"BootCurrent-{EFI_GLOBAL}").write_bytes(
                b"\x06\x00\x00\x00" + int(number, 16).to_bytes(2, "little")
            )
        if loader_partuuid is not None:
            (efivars / f"LoaderDevicePartUUID-{LOADER_VENDOR}").write_bytes(
                b"\x06\x00\x00\x00" + f"{loader_partuuid.upper()}\0".encode("utf-16-le")
            )

    def delete_entry(self, number: str) -> None:
        self.boot_entries = [e for e in self.boot_entries if e[0] != number]
        self.boot_order = [n for n in self.boot_order if n != number]
        self._nvram_changed()

    def create_entry(self, label: str, path: str, number: str | None = None) -> str:
        """An entry made the way `efibootmgr --create` makes it: the lowest free number, first in BootOrder."""
        used = {e[0] for e in self.boot_entries}
        number = number or next(f"{n:04X}" for n in range(0x10000) if f"{n:04X}" not in used)
        self.boot_entries = sorted([*self.boot_entries, (number, label, path, True)])
        self.boot_order.insert(0, number)
        self._nvram_changed()
        return number

    def _nvram_changed(self) -> None:
        lines = ["BootCurrent: 0001", "Timeout: 0 seconds", f"BootOrder: {','.join(self.boot_order)}"]
        lines += [f"Boot{n}{'*' if active else ' '} {label}\t{path}" for n, label, path, active in self.boot_entries]
        self.set_efivars(efibootmgr="\n".join(lines) + "\n")

    def nvram(self) -> tuple[tuple[str, ...], list[tuple[str, str, str, bool]]]:
        return tuple(self.boot_order), list(self.boot_entries)

    # -- answering ---------------------------------------------------------------------------

    def _partition(self, node: str) -> tuple[FakeDisk, FakePartition] | None:
        return next(((d, p) for d in self.disks.values() for p in d.partitions if d.node(p.number) == node), None)

    def _upkeep(self, argv: tuple[str, ...]) -> Result | None:
        match argv:
            case ("blkid", "-p", "-o", "export", node) if self._partition(node):
                disk, part = self._partition(node)
                _major, _minor = disk.majmin.split(":")
                return _export(
                    argv,
                    {
                        "DEVNAME": node,
                        **part.probe,
                        "PART_ENTRY_SCHEME": "gpt",
                        "PART_ENTRY_NAME": part.name,
                        "PART_ENTRY_UUID": part.uuid.lower(),
                        "PART_ENTRY_TYPE": part.type_guid.lower(),
                        "PART_ENTRY_NUMBER": str(part.number),
                        "PART_ENTRY_OFFSET": str(part.start),
                        "PART_ENTRY_SIZE": str(part.size),
                        "PART_ENTRY_DISK": disk.majmin,
                    },
                )
            case ("blockdev", "--flushbufs", node) if node in self.members:
                return Result(argv, 0)
            case ("mdir", "-/", "-b", "-i", node, "::/") if node in self.members:
                files = self.members[node]
                if not files:  # mtools 4.0 on an empty FAT
                    return Result(argv, 1, "", 'mdir: File "::/" not found\n')
                entries = {f"::/{'/'.join(Path(p).parts[:i])}/" for p in files for i in range(1, len(Path(p).parts))}
                return Result(argv, 0, "".join(f"{e}\n" for e in sorted(entries | {f"::/{p}" for p in files})))
            case ("mcopy", "-s", "-p", "-m", "-n", "-i", node, "::/*", dest) if node in self.members:
                for path, data in self.members[node].items():
                    where = Path(dest, path)
                    where.parent.mkdir(parents=True, exist_ok=True)
                    where.write_bytes(data)
                    os.utime(where, (FAT_MTIME, FAT_MTIME))
                return Result(argv, 0)
            case ("mcopy", "-n", "-i", node, *sources, dest) if node in self.members and dest.endswith("/"):
                files = {p.lower(): data for p, data in self.members[node].items()}  # FAT ignores case
                missing = ""
                for path in sources:
                    data = files.get(path.removeprefix("::/").lower())
                    if data is None:  # mtools 4.0
                        missing += f'mcopy: File "{path}" not found\n'
                    else:
                        Path(dest, path.rsplit("/", 1)[-1]).write_bytes(data)
                return Result(argv, 1 if missing else 0, "", missing)
            case ("fsck.fat", "-n", node) if node in self.members:
                code, text = self.fsck.get(node, (0, FSCK_CLEAN))
                return Result(argv, code, text.format(node=node))
            case ("mdadm", "--examine", "--export", node) if node in self.superblocks:
                return Result(argv, 0, "".join(f"{k}={v}\n" for k, v in self.superblocks[node].items()))
            case ("mdadm", "--examine", "--export", node) if self._partition(node):
                if self._partition(node)[1].probe.get("TYPE") == "vfat":  # mdadm 4.2 reads a FAT as an MBR
                    return Result(argv, 0, "")
                return Result(argv, 1, "", f"mdadm: No md superblock detected on {node}.\n")
        return None

    def accept_changes(self) -> None:
        """Let changing commands succeed, and play what md, mount and efibootmgr do with them."""
        self.runner.responders.append(self._change)
        super().accept_changes()

    def _change(self, argv: tuple[str, ...]) -> Result | None:
        match argv:
            case ("rm", "--", path):
                os.unlink(path)
            case ("rm", "-f", "--", path):
                if os.path.lexists(path):
                    os.unlink(path)
            case ("umount", mountpoint):
                self.mountinfo = [line for line in self.mountinfo if f" {mountpoint} " not in line]
                self._write_proc()
            case ("mount", "-t", "vfat", "-o", "umask=0077", "/dev/md/esp", mountpoint):
                self.mount("9:127", mountpoint, "vfat", "/dev/md127")
            case ("mdadm", "/dev/md/esp", "--fail", node, "--remove", again) if node == again:
                self.take_out(node)
                for holder in (self._sys(os.path.basename(node)) / "holders").glob("*"):
                    holder.unlink()  # md no longer holds the partition
            case ("mount", "-t", "vfat", "-o", "umask=0077", node, mountpoint) if self._partition(node):
                disk, part = self._partition(node)
                self.mount(self.partition_devnum(disk, part.number), mountpoint, "vfat", node)
            case ("mdadm", "--stop", "/dev/md/esp"):
                for node in self.member_nodes():
                    for holder in (self._sys(os.path.basename(node)) / "holders").iterdir():
                        holder.unlink()
                self.stop_array()
            case ("mdadm", "--zero-superblock", node) if node in self.superblocks:
                del self.superblocks[node]
                _, part = self._partition(node)
                self.raid_probes[node] = part.probe
                part.probe = dict(part.inner)  # the FAT at the partition's start is what blkid finds now
            case ("fatlabel", "-i", node, serial) if self._partition(node):
                _, part = self._partition(node)
                for found in (part.inner, part.probe):
                    if found.get("TYPE") == "vfat":
                        found["UUID"] = f"{serial[:4]}-{serial[4:]}".upper()
            case ("mdadm", "--grow", "/dev/md/esp", raid_devices, *force) if (
                raid_devices.startswith("--raid-devices=")
                and force in ([], ["--force"])
                and int(raid_devices.split("=")[1]) < int(self.md_attr("raid_disks"))
            ):  # fewer members: md packs the members that are left into the first slots
                raid_disks = int(raid_devices.split("=")[1])
                placed = sorted((n for n in self.member_nodes() if self._slot(n) is not None), key=self._slot)
                for slot, node in enumerate(placed):
                    self.set_member(node, "in_sync", slot)
                self.set_md(raid_disks=raid_disks, degraded=max(0, raid_disks - len(placed)))
            case ("mdadm", "/dev/md/esp", "--re-add", node) if node not in self.readd:
                return Result(argv, 1, "", f"mdadm: --re-add for {node} to /dev/md/esp is not possible\n")
            case ("mdadm", "/dev/md/esp", "--add" | "--re-add", node):
                in_use = {self._slot(n) for n in self.member_nodes()}
                raid_disks = int(self.md_attr("raid_disks"))
                slot = next((s for s in range(raid_disks) if s not in in_use), None)
                source = next(n for n in self.member_nodes() if n in self.members)
                self.members[node] = dict(self.members[source])  # the recovery copies a whole member
                self.set_member(node, "in_sync" if slot is not None else "spare", slot)
                self.set_md(degraded=max(0, int(self.md_attr("degraded")) - (slot is not None)))
                if node not in self.superblocks:  # zeroed before (a repair): md writes a new member's
                    self.superblocks[node] = superblock(ARRAY_UUID, events=120)
                    _, part = self._partition(node)
                    part.probe = self.raid_probes.pop(node, part.probe)
                holders = self._sys(os.path.basename(node)) / "holders"
                if holders.is_dir():
                    (holders / "md127").touch()
            case ("mdadm", "--grow", "/dev/md/esp", raid_devices) if raid_devices.startswith("--raid-devices="):
                self.set_md(raid_disks=int(raid_devices.split("=")[1]))
                for spare in [n for n in self.member_nodes() if self._slot(n) is None]:
                    in_use = {self._slot(n) for n in self.member_nodes()}
                    self.set_member(spare, "in_sync", next(s for s in range(64) if s not in in_use))
            case ("sgdisk", new, "--typecode=1:EF00", guid, name, disk) if new.startswith("--new=1:"):
                first, last = (int(n) for n in new.split(":")[1:])
                self.add_partition(
                    self.disks[disk],
                    1,
                    first,
                    last - first + 1,
                    type_guid=ESP_TYPE,
                    uuid=guid.split(":", 1)[1],
                    name=name.split(":", 1)[1],
                )
            case ("efibootmgr", "--quiet", "--bootnum", number, "--delete-bootnum"):
                self.delete_entry(number)
            case (
                "efibootmgr",
                "--quiet",
                "--create",
                "--bootnum",
                number,
                "--disk",
                disk,
                "--part",
                part,
                "--label",
                label,
                "--loader",
                loader,
            ):
                guid = next(p.uuid.lower() for p in self.disks[disk].partitions if p.number == int(part))
                self.create_entry(label, hd_path(guid, loader), number)
            case ("efibootmgr", "--quiet", "--bootorder", order):
                self.boot_order = order.split(",")
                self._nvram_changed()
            case _:
                return None
        return Result(argv, 0)


def superblock(uuid: str, events: int, devices: int = 2) -> dict[str, str]:
    """``mdadm --examine --export`` of a 1.0 member (mdadm 4.2, as captured in the VM)."""
    return {
        "MD_LEVEL": "raid1",
        "MD_DEVICES": str(devices),
        "MD_NAME": "any:esp",
        "MD_UUID": uuid,
        "MD_UPDATE_TIME": "1700000000",
        "MD_DEV_UUID": "5b5f6c0e:8b7a1c2d:3e4f5a6b:7c8d9e0f",
        "MD_EVENTS": str(events),
    }


def isolate_upkeep(machine: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The two things the upkeep commands take from the real machine whatever is injected: the
    record (read from "/", not through the host view) and their work directory (/run/esp-mirror)."""
    monkeypatch.setattr(upkeep_commands, "WORK_DIR", str(machine.root / "run/esp-mirror"))


@pytest.fixture
def mirror_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Make a :class:`Mirror` of the given disks: ``mirror_of("vda", "vdb", "vdc")``."""

    def make(*disks: str) -> Mirror:
        machine = Mirror(tmp_path, disks)
        isolate_upkeep(machine, monkeypatch)
        return machine

    return make


@pytest.fixture
def mirror(mirror_of) -> Mirror:
    """/dev/vda and /dev/vdb mirrored by an earlier apply, booted, healthy (see :class:`Mirror`)."""
    return mirror_of("vda", "vdb")


def fast_applier(machine: Machine, monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Make the Applier that the upkeep CLI builds look for new partitions through the host view and
    wait on a fake clock. upkeep.commands (carry_out, check, heal) builds
    ``Applier(runner, out, host=host)``, whose ``exists`` is the real os.path.exists and whose clock
    and sleep are real, whatever is injected."""
    clock = FakeClock()
    applier = functools.partial(upkeep_commands.Applier, clock=clock, sleep=clock.sleep)
    monkeypatch.setattr(upkeep_commands, "Applier", applier)
    return clock


UPKEEP_READS = ("blockdev", "--flushbufs"), ("mdir",), ("mcopy",), ("fsck.fat", "-n")


def upkeep_changes(calls: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """The calls that change the machine: not discovery's probes, not check/repair's member reads."""
    return [c for c in calls if not is_read_only(c) and not any(c[: len(p)] == p for p in UPKEEP_READS)]


def assert_upkeep_only_read(calls: list[tuple[str, ...]]) -> None:
    changing = upkeep_changes(calls)
    assert changing == [], f"commands that change the machine ran: {changing}"


class FakeClock:
    """``clock`` and ``sleep`` for an Applier: sleeping only moves the clock (and calls ``on_sleep``)."""

    def __init__(self, start: float = 1000.0, on_sleep=None) -> None:
        self.start = self.now = start
        self.naps: list[float] = []
        self.on_sleep = on_sleep

    def __call__(self) -> float:
        return self.now

    @property
    def elapsed(self) -> float:
        return self.now - self.start

    def sleep(self, seconds: float) -> None:
        self.naps.append(seconds)
        self.now += seconds
        if self.on_sleep:
            self.on_sleep(self.elapsed)
