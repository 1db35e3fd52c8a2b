"""One read-only look at the machine, taken before planning: a typed :class:`Snapshot`.

Planning is a pure function of (request, profile, snapshot). Discovery only reads: sysfs and
/proc through a :class:`HostView`, and read-only commands (sfdisk --json, blkid -p, mdadm
--detail, efibootmgr) through the runner. Tests feed a fake HostView and scripted command output.
"""

from __future__ import annotations

import json
import os
from collections import Counter
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import bootentries
from .errors import BadInput
from .profiles import Profile
from .request import Request
from .runner import Runner

EFIVARS = "/sys/firmware/efi/efivars"


class HostView:
    """Reads of the running system's sysfs, /proc and /dev (prefixed by ``sysroot`` in tests)."""

    def __init__(self, sysroot: str = "/") -> None:
        self.sysroot = sysroot

    def _p(self, path: str) -> str:
        return os.path.join(self.sysroot, path.lstrip("/"))

    def read(self, path: str) -> str | None:
        try:
            return Path(self._p(path)).read_text()
        except OSError:
            return None

    def read_bytes(self, path: str) -> bytes | None:
        try:
            return Path(self._p(path)).read_bytes()
        except OSError:
            return None

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(self._p(path)))
        except OSError:
            return []

    def exists(self, path: str) -> bool:
        return os.path.lexists(self._p(path))

    def realpath(self, path: str) -> str:
        real = os.path.realpath(self._p(path))
        root = os.path.realpath(self.sysroot)
        return "/" + os.path.relpath(real, root) if root != "/" else real

    def kind(self, path: str) -> str:
        """"block", "file", "missing" or "other" for a disk argument."""
        try:
            mode = os.stat(self._p(path)).st_mode
        except OSError:
            return "missing"
        return "block" if stat.S_ISBLK(mode) else "file" if stat.S_ISREG(mode) else "other"

    def file_key(self, path: str) -> str:
        st = os.stat(self._p(path))
        return f"inode:{st.st_dev}:{st.st_ino}"

    def file_size(self, path: str) -> int:
        return os.stat(self._p(path)).st_size


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # in logical sectors
    size: int  # in logical sectors
    type_guid: str  # upper case
    guid: str  # lower case
    name: str
    fstype: str = ""  # blkid TYPE: vfat, linux_raid_member, LVM2_member, swap ...
    md_uuid: str = ""  # for linux_raid_member: the array UUID (mdadm form)
    md_name: str = ""  # for linux_raid_member: the array name ("any:esp")
    inner_fstype: str = ""  # for linux_raid_member: the filesystem at offset 0 (metadata 1.0)
    inner_uuid: str = ""


@dataclass(frozen=True)
class DiskFacts:
    given: str  # as the user wrote it
    path: str  # the resolved /dev node or image file
    kind: str  # "block", "image", "missing", "partition", "other"
    key: str  # equal for two paths to the same device
    name: str = ""  # kernel name (sda) or image file name
    identity: str = ""  # stable identity: serial/WWN, else path
    size: int = 0  # bytes
    sector_size: int = 512
    pttype: str = ""  # "gpt", "dos", "" when none
    signatures: tuple[str, ...] = ()  # whole-disk blkid types (LVM2_member, linux_raid_member ...)
    partitions: tuple[Partition, ...] = ()
    busy: tuple[tuple[str, str], ...] = ()  # (node, why it is in use): mounts, holders, swap, root

    def partition(self, number: int) -> Partition | None:
        return next((p for p in self.partitions if p.number == number), None)


@dataclass(frozen=True)
class ArrayFacts:
    """The running array at /dev/md/<name>, when there is one."""

    device: str
    uuid: str  # mdadm form
    level: str
    metadata: str
    members: tuple[str, ...]
    kernel_device: str = ""  # /dev/md127 for /dev/md/esp: how /proc/self/mountinfo names it
    fstype: str = ""
    fs_uuid: str = ""


@dataclass(frozen=True)
class Mount:
    source: str  # maj:min
    mountpoint: str
    fstype: str
    device: str


@dataclass(frozen=True)
class Snapshot:
    disks: tuple[DiskFacts, ...]
    array: ArrayFacts | None
    mounts: tuple[Mount, ...]
    efivars: bool
    boot: bootentries.BootState | None  # None when NVRAM is not read
    missing_host_tools: tuple[str, ...]
    missing_target_tools: tuple[str, ...]
    fstab: str  # the target's /etc/fstab ("" when missing)
    mdadm_conf: str
    target_kernels: tuple[str, ...]
    target_has_shim: bool
    notes: tuple[str, ...] = field(default=())

    def disk(self, given: str) -> DiskFacts:
        return next(d for d in self.disks if d.given == given)

    def mounted_at(self, path: str) -> Mount | None:
        norm = os.path.normpath(path)
        return next((m for m in reversed(self.mounts) if m.mountpoint == norm), None)


def discover(request: Request, profile: Profile, runner: Runner, host: HostView | None = None,
             host_tools: tuple[str, ...] = (), target_tools: tuple[str, ...] = ()) -> Snapshot:
    """Read everything planning needs. Runs only read-only commands."""
    host = host or HostView()
    mounts = read_mounts(host)
    # Our own array holding our partitions is not "in use" (a re-run); whether it really is ours
    # is decided by the layout from the superblocks' UUIDs.
    ours = os.path.basename(host.realpath(request.device)) if host.exists(request.device) else ""
    disks = describe_disks(request.disks, runner, host, mounts, ours)
    array = _array(request.device, host, runner)
    efivars = bool(host.listdir(EFIVARS))
    boot = None
    if efivars and not request.no_nvram and not any(d.kind == "image" for d in disks):
        result = runner.run(("efibootmgr", "-v"))
        if not result.ok:
            raise BadInput(f"efibootmgr -v failed ({result.stderr.strip() or f'exit {result.returncode}'}): "
                           "boot entries cannot be planned; fix access to EFI variables, or pass --no-nvram")
        boot = bootentries.parse(result.stdout)
    target = Path(request.target)
    return Snapshot(
        disks=disks,
        array=array,
        mounts=mounts,
        efivars=efivars,
        boot=boot,
        missing_host_tools=tuple(t for t in host_tools if runner.which(t) is None),
        missing_target_tools=tuple(t for t in target_tools if runner.which(t, request.target) is None),
        fstab=_read(target / "etc/fstab"),
        mdadm_conf=_read(target / profile.mdadm_conf.lstrip("/")),
        target_kernels=tuple(sorted(p.name for p in (target / "lib/modules").glob("*") if p.is_dir())),
        target_has_shim=(target / "usr/lib/shim/shimx64.efi.signed").is_file(),
    )


def describe_disks(paths: tuple[str, ...], runner: Runner, host: HostView, mounts: tuple[Mount, ...],
                   ours: str = "") -> tuple[DiskFacts, ...]:
    """DiskFacts for each path; ``ours`` is the kernel name of our array (its holds don't count)."""
    swaps = _swaps(host)
    root_dev = next((m.source for m in mounts if m.mountpoint == "/"), "")
    return _distinct(tuple(_disk(p, host, runner, mounts, swaps, root_dev, ours) for p in paths))


def _distinct(disks: tuple[DiskFacts, ...]) -> tuple[DiskFacts, ...]:
    """Disks that report one serial (USB bridges, namespaces of one controller) get their kernel
    name added to the identity, so partition GUIDs and entry labels stay unique."""
    counts = Counter(d.identity for d in disks if d.identity)
    return tuple(replace(d, identity=f"{d.identity}@{d.name}") if counts[d.identity] > 1 else d for d in disks)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def read_mounts(host: HostView) -> tuple[Mount, ...]:
    out = []
    for line in (host.read("/proc/self/mountinfo") or "").splitlines():
        left, _, right = line.partition(" - ")
        parts, rparts = left.split(), right.split()
        if len(parts) >= 5 and len(rparts) >= 2:
            out.append(Mount(parts[2], _unescape(parts[4]), rparts[0], rparts[1]))
    return tuple(out)


def _unescape(path: str) -> str:
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")


def _swaps(host: HostView) -> set[str]:
    lines = (host.read("/proc/swaps") or "").splitlines()[1:]
    return {os.path.basename(host.realpath(line.split()[0])) for line in lines if line.split()}


def _disk(given: str, host: HostView, runner: Runner, mounts, swaps, root_dev: str, ours: str) -> DiskFacts:
    kind = host.kind(given)
    if kind == "missing":
        return DiskFacts(given, given, "missing", f"missing:{given}")
    if kind == "other":
        return DiskFacts(given, given, "other", f"other:{given}")
    path = host.realpath(given)
    if kind == "file":
        size = host.file_size(path)
        return _with_table(DiskFacts(given, path, "image", host.file_key(path), name=os.path.basename(path),
                                     identity=f"image:{path}", size=size), runner)
    name = os.path.basename(path)
    sys = f"/sys/class/block/{name}"
    dev = (host.read(f"{sys}/dev") or "").strip()
    if host.exists(f"{sys}/partition"):
        return DiskFacts(given, path, "partition", f"dev:{dev}", name=name)
    serial = next((v.strip() for p in ("device/serial", "serial", "device/wwid", "wwid")
                   if (v := host.read(f"{sys}/{p}")) and v.strip()), "")
    size = int((host.read(f"{sys}/size") or "0").strip() or 0) * 512
    sector = int((host.read(f"{sys}/queue/logical_block_size") or "512").strip() or 512)
    children = [c for c in host.listdir(sys) if host.exists(f"{sys}/{c}/partition")]
    devnums = {dev: name} | {(host.read(f"{sys}/{c}/dev") or "").strip(): c for c in children}
    busy = []
    if root_dev in devnums:
        busy.append((devnums[root_dev], f"{devnums[root_dev]} holds the running root filesystem"))
    for m in mounts:
        if m.source in devnums:
            busy.append((devnums[m.source], f"{devnums[m.source]} is mounted at {m.mountpoint}"))
    for node in (name, *children):
        base = sys if node == name else f"{sys}/{node}"
        for holder in host.listdir(f"{base}/holders"):
            if node != name and holder == ours:
                continue
            busy.append((node, f"{node} is in use by {holder} (an md array, LVM or dm device)"))
        if node in swaps:
            busy.append((node, f"{node} is active swap"))
    facts = DiskFacts(given, path, "block", f"dev:{dev}", name=name,
                      identity=f"serial:{serial}" if serial else f"dev:{path}", size=size,
                      sector_size=sector, busy=tuple(dict.fromkeys(busy)))
    return _with_table(facts, runner)


def _with_table(disk: DiskFacts, runner: Runner) -> DiskFacts:
    """Add the partition table (sfdisk --json) and on-disk signatures (blkid -p)."""
    probe = runner.run(("blkid", "-p", "-o", "export", disk.path))
    whole = _export(probe.stdout) if probe.ok else {}
    signatures = tuple(v for k in ("TYPE", "PTTYPE") if (v := whole.get(k)))
    if probe.returncode == 8:  # ambivalent: several old signatures; blkid then prints none
        signatures += ("several conflicting signatures",)
    if probe.returncode == 2 or (probe.ok and "PTTYPE" not in whole):  # no table for sfdisk to list
        return replace(disk, signatures=signatures)
    table = runner.run(("sfdisk", "--json", disk.path))
    if not table.ok or not table.stdout.strip():
        return replace(disk, signatures=signatures, pttype=whole.get("PTTYPE", ""))
    data = json.loads(table.stdout)["partitiontable"]
    sector = int(data.get("sectorsize", disk.sector_size))
    partitions = []
    for number, part in enumerate(data.get("partitions", ()), start=1):
        number = _partition_number(part.get("node", ""), number)
        probe = blkid_export(runner, ("blkid", "-p", "-o", "export", "-O", str(part["start"] * sector),
                                "-S", str(part["size"] * sector), disk.path))
        is_md = probe.get("TYPE") == "linux_raid_member"
        inner = blkid_export(runner, ("blkid", "-p", "-u", "filesystem", "-o", "export", "-O",
                                str(part["start"] * sector), "-S", str(part["size"] * sector),
                                disk.path)) if is_md else {}
        partitions.append(Partition(
            number=number, start=part["start"], size=part["size"],
            type_guid=str(part.get("type", "")).upper(), guid=str(part.get("uuid", "")).lower(),
            name=part.get("name", ""), fstype=probe.get("TYPE", ""),
            md_uuid=probe.get("UUID", "") if is_md else "", md_name=probe.get("LABEL", "") if is_md else "",
            inner_fstype=inner.get("TYPE", ""), inner_uuid=inner.get("UUID", "")))
    return replace(disk, pttype=data.get("label", ""), signatures=signatures, partitions=tuple(partitions))


def _partition_number(node: str, fallback: int) -> int:
    digits = ""
    for ch in reversed(node):
        if not ch.isdigit():
            break
        digits = ch + digits
    return int(digits) if digits else fallback


def blkid_export(runner: Runner, argv: tuple[str, ...]) -> dict[str, str]:
    """blkid -o export output as a dict; exit code 2 means "nothing found"."""
    result = runner.run(argv)
    return _export(result.stdout) if result.ok else {}


def _export(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def md_detail(runner: Runner, host: HostView, device: str) -> dict[str, str] | None:
    """``mdadm --detail --export`` of a running array as a dict; None when it is not running."""
    if not host.exists(device):
        return None
    detail = runner.run(("mdadm", "--detail", "--export", device))
    return _export(detail.stdout) if detail.ok else None


def _array(device: str, host: HostView, runner: Runner) -> ArrayFacts | None:
    info = md_detail(runner, host, device)
    if info is None:
        return None
    members = tuple(v for k, v in sorted(info.items()) if k.startswith("MD_DEVICE_") and k.endswith("_DEV"))
    fs = blkid_export(runner, ("blkid", "-p", "-o", "export", device))
    return ArrayFacts(device=device, uuid=info.get("MD_UUID", ""), level=info.get("MD_LEVEL", ""),
                      metadata=info.get("MD_METADATA", ""), members=members,
                      kernel_device=host.realpath(device),
                      fstype=fs.get("TYPE", ""), fs_uuid=fs.get("UUID", ""))
