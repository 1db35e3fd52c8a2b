"""One read-only look at the machine, taken before planning: a typed :class:`Snapshot`.

Planning is a pure function of (request, profile, snapshot). Discovery only reads: sysfs and
/proc through a :class:`HostView`, and read-only commands (sfdisk --json, blkid -p, mdadm
--detail, efibootmgr) through the runner. Tests feed a fake HostView and scripted command output.
"""

from __future__ import annotations

import json
import os
import stat
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.system import nvram
from esp_mirror_plugin.system.runner import NOT_INSTALLED, CommandFailed, Result, Runner

EFIVARS = "/sys/firmware/efi/efivars"
EFI_GLOBAL = "8be4df61-93ca-11d2-aa0d-00e098032b8c"  # the UEFI specification's global variables
ESP_TYPE_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"  # the GPT type of an EFI System Partition (sgdisk EF00)
MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}  # mtools reads a FAT whatever geometry its boot sector claims


class HostView:
    """Reads of the running system's sysfs, /proc and /dev (prefixed by ``sysroot`` in tests)."""

    def __init__(self, sysroot: str = "/") -> None:
        self.sysroot = sysroot

    def _p(self, path: str) -> str:
        return os.path.join(self.sysroot, path.lstrip("/"))

    def at(self, path: str) -> Path:
        """Where ``path`` of the running system is (under ``sysroot`` in tests): for the one
        link apply makes in /dev (:class:`~esp_mirror_plugin.pipeline.steps.UuidLink`)."""
        return Path(self._p(path))

    def read(self, path: str) -> str | None:
        """The file's text, or None when it does not exist or cannot be read (optional facts)."""
        try:
            return Path(self._p(path)).read_text()
        except OSError:
            return None

    def attr(self, path: str) -> str:
        """A fact that must be there (an md sysfs attribute): its stripped text.

        :raises Unreadable: when it is missing or cannot be read; never a guessed default.
        """
        try:
            return Path(self._p(path)).read_text().strip()
        except OSError as exc:
            raise Unreadable(path, exc.strerror or str(exc)) from None

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

    def systemd_booted(self) -> bool:
        """systemd is PID 1 here (sd_booted(3)): not a chroot's view, a rescue system, an initramfs."""
        return self.exists("/run/systemd/system")

    def realpath(self, path: str) -> str:
        real = os.path.realpath(self._p(path))
        root = os.path.realpath(self.sysroot)
        return "/" + os.path.relpath(real, root) if root != "/" else real

    def kind(self, path: str) -> str:
        """ "block", "file", "missing" or "other" for a disk argument."""
        try:
            mode = os.stat(self._p(path)).st_mode
        except OSError:
            return "missing"
        return "block" if stat.S_ISBLK(mode) else "file" if stat.S_ISREG(mode) else "other"

    def cannot_read(self, path: str) -> str | None:
        """Why ``path`` cannot be opened for reading, or None when it can."""
        try:
            os.close(os.open(self._p(path), os.O_RDONLY | os.O_CLOEXEC))
        except OSError as exc:
            return exc.strerror or str(exc)
        return None

    def file_key(self, path: str) -> str:
        st = os.stat(self._p(path))
        return f"inode:{st.st_dev}:{st.st_ino}"

    def file_size(self, path: str) -> int:
        return os.stat(self._p(path)).st_size


class Unreadable(Exception):
    """A fact that must be read could not be: ``what`` and the system's reason."""

    def __init__(self, what: str, why: str) -> None:
        self.what, self.why = what, why
        super().__init__(f"cannot read {what} ({why})")


def _denied(why: str) -> bool:
    return "denied" in why.lower() or "not permitted" in why.lower()


@dataclass
class Reads:
    """What to do with a fact that could not be read.

    Strict (apply, and plan as root): bad input naming it and the fix. Lenient (plan run by a
    user who cannot read the disks): it is listed as unverified, the plan goes on assuming it
    absent, and apply, which must run as root, reads it again.
    """

    lenient: bool = False
    unread: list[str] = field(default_factory=list)

    def cannot(self, what: str, why: str, fix: str = "") -> None:
        if self.lenient:
            self.unread.append(f"{what} ({why})")
            return
        fix = fix or (
            "run esp-mirror as root"
            if _denied(why)
            else "check that it can be read (permissions, dmesg), or leave it out"
        )
        raise BadInput(f"cannot read {what} ({why}): {fix}")


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
    fs_uuid: str = ""  # blkid UUID of the file system on it (a FAT's XXXX-XXXX); "" for md members
    label: str = ""  # blkid LABEL of the file system on it; "" for md members
    fat_files: int | None = None  # an ESP partition's FAT: how many files it holds; None when not read
    devnum: str = ""  # maj:min, for a partition of a block device ("" for an image file)
    holders: tuple[str, ...] = ()  # kernel names of what holds it (an md array, device-mapper)
    mountpoints: tuple[str, ...] = ()  # where it is mounted now

    @property
    def is_esp(self) -> bool:
        """GPT type EF00, the EFI System Partition."""
        return self.type_guid == ESP_TYPE_GUID


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
    storage: tuple[str, ...] = ()  # what the storage behind it is: "wwid:...", "serial:...", "file:..."
    readable: bool = True  # False: its content could not be read (a plan by a user, not root)

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
    sync_action: str = "idle"  # resync, recover, check ... while md copies or compares members
    resync_owed: bool = False  # md/resync_start is not "none": a resync md has not finished (or started)


@dataclass(frozen=True)
class Mount:
    source: str  # maj:min
    mountpoint: str
    fstype: str
    device: str


@dataclass(frozen=True)
class Snapshot:
    """The machine as discovery saw it: disks, the array, mounts and the firmware's boot entries.

    What is inside the target root (its files, kernels, packages) is not here: a hook reads it
    when it plans (:class:`esp_mirror_plugin.system.target.Target`), since an installer fills the
    target between the hooks.
    """

    disks: tuple[DiskFacts, ...]
    array: ArrayFacts | None
    mounts: tuple[Mount, ...]
    efivars: bool
    boot: nvram.BootState | None  # None when NVRAM is not read
    unread: tuple[str, ...] = ()  # facts that could not be read (a lenient plan only)
    inactive: str = ""  # the array's device exists but is not running (assembled in part, never started)
    boot_text: str = ""  # what efibootmgr -v printed (an adoption keeps it as its backup of the entries)
    secure_boot: bool | None = None  # the firmware enforces Secure Boot; None: it cannot say (secure_boot())

    def mounted_at(self, path: str) -> Mount | None:
        norm = os.path.normpath(path)
        return next((m for m in reversed(self.mounts) if m.mountpoint == norm), None)


def discover(
    disks: tuple[str, ...],
    device: str,
    runner: Runner,
    host: HostView | None = None,
    *,
    read_nvram: bool = True,
    lenient: bool = False,
) -> Snapshot:
    """Read everything planning needs about the machine. Runs only read-only commands.

    :param disks: the disks to mirror on (``--disk``).
    :param device: the array's device (``--device``, /dev/md/<name>).
    :param read_nvram: read the firmware's boot entries (not with ``--no-nvram``).
    :param lenient: list facts that cannot be read instead of refusing (``plan`` by a non-root user).
    :raises BadInput: a fact that cannot be read, in strict mode.
    """
    host = host or HostView()
    reads = Reads(lenient)
    mounts = read_mounts(host)
    # Our own array holding our partitions is not "in use" (a re-run); whether it really is ours
    # is decided by the layout from the superblocks' UUIDs.
    ours = os.path.basename(host.realpath(device)) if host.exists(device) else ""
    described = describe_disks(disks, runner, host, mounts, ours, reads)
    array = _array(device, host, runner, reads)
    inactive = device if array is None and ours and host.exists(f"/sys/block/{ours}/md") else ""
    efivars = bool(host.listdir(EFIVARS))
    boot, boot_text = None, ""
    if efivars and read_nvram and not any(d.kind == "image" for d in described):
        try:
            boot_text = runner.run(("efibootmgr", "-v")).stdout
            boot = nvram.parse(boot_text)
        except CommandFailed as exc:
            reads.cannot(
                "the firmware's boot entries (efibootmgr -v)",
                exc.stderr_line,
                "boot entries cannot be planned; fix access to EFI variables, or pass --no-nvram",
            )
    return Snapshot(
        disks=described,
        array=array,
        mounts=mounts,
        efivars=efivars,
        boot=boot,
        unread=tuple(reads.unread),
        inactive=inactive,
        boot_text=boot_text,
        secure_boot=secure_boot(host),
    )


def efivar(host: HostView, name: str) -> bytes | None:
    """An EFI variable's value (its 4 attribute bytes left off), or None when it is not there."""
    data = host.read_bytes(f"{EFIVARS}/{name}")
    return data[4:] if data and len(data) > 4 else None


def secure_boot(host: HostView) -> bool | None:
    """Whether the firmware enforces Secure Boot: SecureBoot is 1 and SetupMode is not (in setup
    mode nothing is checked). None when there are no EFI variables (a BIOS boot, a container) or
    no SecureBoot variable (firmware without Secure Boot): unknown, never guessed "off"."""
    value = efivar(host, f"SecureBoot-{EFI_GLOBAL}")
    if value is None:
        return None
    setup = efivar(host, f"SetupMode-{EFI_GLOBAL}") or b""
    return value[:1] == b"\x01" and setup[:1] != b"\x01"


def describe_disks(
    paths: tuple[str, ...],
    runner: Runner,
    host: HostView,
    mounts: tuple[Mount, ...],
    ours: str = "",
    reads: Reads | None = None,
) -> tuple[DiskFacts, ...]:
    """DiskFacts for each path; ``ours`` is the kernel name of our array (its holds don't count)."""
    reads = reads or Reads()
    swaps = _swaps(host)
    root_dev = next((m.source for m in mounts if m.mountpoint == "/"), "")
    return _distinct(tuple(_disk(p, host, runner, mounts, swaps, root_dev, ours, reads) for p in paths))


def _distinct(disks: tuple[DiskFacts, ...]) -> tuple[DiskFacts, ...]:
    """Disks that report one serial but are different storage (NVMe namespaces of one controller,
    told apart by their WWIDs) get their kernel name added to the identity, so partition GUIDs
    and entry labels stay unique."""
    counts = Counter(d.identity for d in disks if d.identity)
    return tuple(replace(d, identity=f"{d.identity}@{d.name}") if counts[d.identity] > 1 else d for d in disks)


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


def _first(host: HostView, sys: str, names: tuple[str, ...]) -> str:
    return next((v.strip() for p in names if (v := host.read(f"{sys}/{p}")) and v.strip()), "")


def _disk(
    given: str,
    host: HostView,
    runner: Runner,
    mounts: tuple[Mount, ...],
    swaps: set[str],
    root_dev: str,
    ours: str,
    reads: Reads,
) -> DiskFacts:
    kind = host.kind(given)
    if kind == "missing":
        return DiskFacts(given, given, "missing", f"missing:{given}")
    if kind == "other":
        return DiskFacts(given, given, "other", f"other:{given}")
    path = host.realpath(given)
    if kind == "file":
        size = host.file_size(path)
        key = host.file_key(path)
        return _with_table(
            DiskFacts(
                given,
                path,
                "image",
                key,
                name=os.path.basename(path),
                identity=f"image:{path}",
                size=size,
                storage=(f"file:{key}",),
            ),
            runner,
            host,
            reads,
        )
    name = os.path.basename(path)
    sys = f"/sys/class/block/{name}"
    dev = (host.read(f"{sys}/dev") or "").strip()
    if host.exists(f"{sys}/partition"):
        return DiskFacts(given, path, "partition", f"dev:{dev}", name=name)
    serial = _first(host, sys, ("device/serial", "serial", "device/wwid", "wwid"))
    wwid = _first(host, sys, ("wwid", "device/wwid"))
    storage = [f"wwid:{wwid}" if wwid else f"serial:{serial}"] if wwid or serial else []
    backing = (host.read(f"{sys}/loop/backing_file") or "").strip()
    if backing and host.exists(backing):
        storage.append(f"file:{host.file_key(backing)}")
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
    facts = DiskFacts(
        given,
        path,
        "block",
        f"dev:{dev}",
        name=name,
        identity=f"serial:{serial}" if serial else f"dev:{path}",
        size=size,
        sector_size=sector,
        busy=tuple(dict.fromkeys(busy)),
        storage=tuple(storage),
    )
    facts = _with_table(facts, runner, host, reads)
    by_number = {(host.read(f"{sys}/{c}/partition") or "").strip(): c for c in children}
    partitions = []
    for part in facts.partitions:
        child = by_number.get(str(part.number))
        if child is None:  # in the table, not (yet) known to the kernel
            partitions.append(part)
            continue
        devnum = (host.read(f"{sys}/{child}/dev") or "").strip()
        partitions.append(
            replace(
                part,
                devnum=devnum,
                holders=tuple(host.listdir(f"{sys}/{child}/holders")),
                mountpoints=tuple(m.mountpoint for m in mounts if m.source == devnum),
            )
        )
    return replace(facts, partitions=tuple(partitions))


def _with_table(disk: DiskFacts, runner: Runner, host: HostView, reads: Reads) -> DiskFacts:
    """Add the partition table (sfdisk --json) and on-disk signatures (blkid -p).

    A disk that cannot be read is never taken for a blank one: in strict mode that is bad input,
    in a lenient plan the disk is marked unreadable and listed as unverified.
    """
    why = host.cannot_read(disk.path)
    probe = None
    if why is None:
        probe = _probe(runner, ("blkid", "-p", "-o", "export", disk.path), disk.given, reads, ok=(0, 2, 8))
    if probe is None:
        reads.cannot(f"disk {disk.given}", why or "blkid failed")
        return replace(disk, readable=False)
    whole = _export(probe.stdout) if probe.ok else {}
    signatures = tuple(v for k in ("TYPE", "PTTYPE") if (v := whole.get(k)))
    if probe.returncode == 8:  # ambivalent: several old signatures; blkid then prints none
        signatures += ("several conflicting signatures",)
    if probe.returncode == 2 or (probe.ok and "PTTYPE" not in whole):  # no table for sfdisk to list
        return replace(disk, signatures=signatures)
    try:
        table = runner.run(("sfdisk", "--json", disk.path))
    except CommandFailed as exc:  # a table sfdisk cannot list is still data: --wipe decides
        return replace(
            disk,
            signatures=(*signatures, f"a partition table sfdisk cannot read ({exc.stderr_line})"),
            pttype=whole["PTTYPE"],
        )
    data = json.loads(table.stdout)["partitiontable"] if table.stdout.strip() else {}
    sector = int(data.get("sectorsize", disk.sector_size))
    partitions = []
    for number, part in enumerate(data.get("partitions", ()), start=1):
        number = _partition_number(part.get("node", ""), number)
        where = ("-O", str(part["start"] * sector), "-S", str(part["size"] * sector), disk.path)
        probe = _probe(runner, ("blkid", "-p", "-o", "export", *where), disk.given, reads)
        found = _export(probe.stdout) if probe is not None and probe.ok else {}
        is_md = found.get("TYPE") == "linux_raid_member"
        is_esp = str(part.get("type", "")).upper() == ESP_TYPE_GUID
        files = (
            fat_files(runner, f"{disk.path}@@{part['start'] * sector}")
            if is_esp and found.get("TYPE") == "vfat"
            else None
        )
        inner = {}
        if is_md:
            probe = _probe(runner, ("blkid", "-p", "-u", "filesystem", "-o", "export", *where), disk.given, reads)
            inner = _export(probe.stdout) if probe is not None and probe.ok else {}
        partitions.append(
            Partition(
                number=number,
                start=part["start"],
                size=part["size"],
                type_guid=str(part.get("type", "")).upper(),
                guid=str(part.get("uuid", "")).lower(),
                name=part.get("name", ""),
                fstype=found.get("TYPE", ""),
                md_uuid=found.get("UUID", "") if is_md else "",
                md_name=found.get("LABEL", "") if is_md else "",
                inner_fstype=inner.get("TYPE", ""),
                inner_uuid=inner.get("UUID", ""),
                fs_uuid="" if is_md else found.get("UUID", ""),
                label="" if is_md else found.get("LABEL", ""),
                fat_files=files,
            )
        )
    return replace(
        disk, pttype=data.get("label", whole.get("PTTYPE", "")), signatures=signatures, partitions=tuple(partitions)
    )


def fat_files(runner: Runner, where: str) -> int | None:
    """How many files (directories left out) the FAT at ``where`` holds (a node, or ``PATH@@OFFSET``),
    read with ``mdir`` (read-only); None when mtools cannot read it as a FAT."""
    try:
        listing = runner.run(("mdir", "-/", "-b", "-i", where, "::/"), env=MTOOLS_ENV, ok=(0, 1))
    except CommandFailed as exc:
        if exc.result.returncode == NOT_INSTALLED:
            raise
        return None
    if listing.returncode == 1:  # an empty FAT lists as "::" not found; anything else is no FAT mtools reads
        return 0 if "not found" in listing.stderr else None
    return sum(1 for line in listing.stdout.splitlines() if line.strip() and not line.endswith("/"))


def _probe(
    runner: Runner, argv: tuple[str, ...], given: str, reads: Reads, ok: tuple[int, ...] = (0, 2)
) -> Result | None:
    """blkid -p: exit 2 with nothing on stderr means "nothing found"; exit 2 WITH an error
    (permission denied, I/O error) means it could not look, which is not the same thing."""
    try:
        result = runner.run(argv, ok=ok)
    except CommandFailed as exc:
        if exc.result.returncode == NOT_INSTALLED:
            raise
        reads.cannot(f"disk {given}", exc.stderr_line)
        return None
    if result.returncode == 2 and result.stderr.strip():
        reads.cannot(f"disk {given}", result.stderr.strip().splitlines()[-1])
        return None
    return result


def _partition_number(node: str, fallback: int) -> int:
    digits = ""
    for ch in reversed(node):
        if not ch.isdigit():
            break
        digits = ch + digits
    return int(digits) if digits else fallback


def blkid_export(runner: Runner, argv: tuple[str, ...]) -> dict[str, str]:
    """blkid -o export output as a dict; exit code 2 with a silent stderr means "nothing found".

    :raises CommandFailed: when blkid could not look (exit 2 with an error, or any other code).
    """
    result = runner.run(argv, ok=(0, 2))
    if result.returncode == 2:
        if result.stderr.strip():
            raise CommandFailed(result)
        return {}
    return _export(result.stdout)


def _export(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def md_detail(runner: Runner, host: HostView, device: str, reads: Reads | None = None) -> dict[str, str] | None:
    """``mdadm --detail --export`` of a running array as a dict; None when it is not running.

    md's array_state says "clear" or "inactive" for an array that exists but was never started
    (an ``mdadm --create`` or ``--assemble`` killed half way) or was stopped: mdadm --detail may
    answer for it all the same, but it is not running. A node whose block device is gone from
    /sys/block is a stopped array too: without udev (a rescue system, an initramfs shell) the
    node and mdadm's /dev/md/NAME link outlive ``mdadm --stop``. An array that exists but cannot
    be read is not "no array": strict reads refuse.
    """
    if not host.exists(device) or not host.exists(host.realpath(device)):
        return None
    name = os.path.basename(host.realpath(device))
    if not host.exists(f"/sys/block/{name}"):
        return None
    state = host.read(f"/sys/block/{name}/md/array_state")
    if state is not None and state.strip() in ("clear", "inactive"):
        return None
    try:
        return _export(runner.run(("mdadm", "--detail", "--export", device)).stdout)
    except CommandFailed as exc:
        (reads or Reads()).cannot(f"the array {device}", exc.stderr_line)
        return None


def _array(device: str, host: HostView, runner: Runner, reads: Reads) -> ArrayFacts | None:
    info = md_detail(runner, host, device, reads)
    if info is None:
        return None
    members = tuple(v for k, v in sorted(info.items()) if k.startswith("MD_DEVICE_") and k.endswith("_DEV"))
    try:
        fs = blkid_export(runner, ("blkid", "-p", "-o", "export", device))
    except CommandFailed as exc:
        reads.cannot(f"the array {device}", exc.stderr_line)
        fs = {}
    md = f"/sys/block/{os.path.basename(host.realpath(device))}/md"
    try:  # what md is doing must be known: an unreadable state is not "idle"
        sync_action = host.attr(f"{md}/sync_action")
    except Unreadable as exc:
        reads.cannot(f"the array {device}", str(exc))
        sync_action = "idle"
    resync_owed = (host.read(f"{md}/resync_start") or "none").strip() not in ("none", "")
    return ArrayFacts(
        device=device,
        uuid=info.get("MD_UUID", ""),
        level=info.get("MD_LEVEL", ""),
        metadata=info.get("MD_METADATA", ""),
        members=members,
        kernel_device=host.realpath(device),
        fstype=fs.get("TYPE", ""),
        fs_uuid=fs.get("UUID", ""),
        sync_action=sync_action,
        resync_owed=resync_owed,
    )
