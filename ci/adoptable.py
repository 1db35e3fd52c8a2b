"""A machine that `esp-mirror adopt` takes into the mirror, made and checked INSIDE a guest.

Disk A: partition 1 the live ESP (FAT32 labelled EFI_SYSPART, with files, mounted at the target's
/boot/efi, named in its fstab by UUID, started by a "debian" firmware entry), partition 2 data.
Disk B, as asked: the same layout with a stale copy of the ESP (``stale``: the in-place case, as
ZFSBootMenu's, Proxmox's and grub-multi-install's machines have one ESP per disk), whose
partitions 2 are then the members of an md RAID1 root (metadata 1.2, the data written through
it); or blank. The ESPs are 64 MiB, quick to copy and to sync. What is not an ESP partition (the
GPT areas, the data partitions) is hashed, so a check can show that no byte of it changed.

The target is a directory of its own (/target): the machine's fstab and mdadm.conf, and what
adopt writes there (its journal, backups, record). The kill loop (ci/interrupt.py) keeps it in the
guest's memory; the power-cut test (tests/vm/test_interrupted.py) on a disk that survives the resets.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

ESP_MIB = 64
DATA_MIB = 8
LABEL = "EFI_SYSPART"
LIVE_FILES = {
    "EFI/debian/grubx64.efi": b"MZ the live GRUB\n" * 512,
    "EFI/debian/grub.cfg": b"search.fs_uuid 0a1b2c3d root\nconfigfile $prefix/grub.cfg\n",
    "EFI/BOOT/BOOTX64.EFI": b"MZ the live fallback\n" * 256,
    "EFI/Linux/a file with spaces.txt": b"FAT long names survive the copy\n",
    "EFI/tools/deep/er/nested.bin": bytes(range(256)) * 4096,  # 1 MiB
    "loader/empty": b"",
}
STALE_FILES = {"EFI/debian/grub.cfg": b"an older copy\n", "EFI/debian/only-on-the-stale-copy": b"old\n"}
REPLACED = {"EFI/BOOT/BOOTX64.EFI"}  # --bootloader efi puts its image at the fallback path


TARGET = "/target"


def sh(*argv: str, ok: Sequence[int] = (0,)) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode not in ok:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done


def esp(target: str) -> str:
    return os.path.join(target, "boot/efi")


def _write_files(where: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = Path(where, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _layout(disk: str, files: dict[str, bytes], scratch: str, *, data: bool = True) -> None:
    """Partition 1 an ESP with ``files``, partition 2 (8300, or FD00 for an md member) with data
    written to it unless ``data`` is false (the md root's member: its data goes through md)."""
    sh("sgdisk", "--zap-all", disk, ok=(0, 2))
    sh(
        "sgdisk",
        f"--new=1:2048:+{ESP_MIB}M",
        "--typecode=1:EF00",
        "--change-name=1:EFI System Partition",
        f"--new=2:0:+{DATA_MIB}M",
        f"--typecode=2:{'8300' if data else 'FD00'}",
        f"--change-name=2:{'data' if data else 'root'}",
        disk,
    )
    sh("partx", "--add", disk, ok=(0, 1))
    sh("mkfs.vfat", "-F", "32", "-n", LABEL, f"{disk}1")
    if data:
        with open(f"{disk}2", "wb") as out:
            out.write(hashlib.sha256(disk.encode()).digest() * (DATA_MIB * 1024 * 1024 // 32))
    os.makedirs(scratch, exist_ok=True)
    sh("mount", f"{disk}1", scratch)
    _write_files(scratch, files)
    sh("umount", scratch)


def outside_hashes(disks: Sequence[str]) -> dict[str, str]:
    """sha256 of every byte of each disk outside its ESP partition (partition 1)."""
    out = {}
    for disk in disks:
        table = json.loads(sh("sfdisk", "--json", disk).stdout)["partitiontable"]
        esp_part = next(p for p in table["partitions"] if p["node"] == f"{disk}1")
        sector = table.get("sectorsize", 512)
        start, end = esp_part["start"] * sector, (esp_part["start"] + esp_part["size"]) * sector
        digest = hashlib.sha256()
        with open(disk, "rb") as handle:
            digest.update(handle.read(start))
            handle.seek(end)
            while chunk := handle.read(4 << 20):
                digest.update(chunk)
        out[disk] = digest.hexdigest()
    return out


def _root_array(*members: str) -> None:
    """The machine's md RAID1 root on ``members``, data written through it, then stopped (what md
    writes when the array stops is in place before the hashes are taken)."""
    sh("modprobe", "raid1")
    sh("mdadm", "--create", "/dev/md/espvm-root", "--run", "--level=1", f"--raid-devices={len(members)}",
       "--metadata=1.2", "--homehost=any", "--name=root", "--assume-clean", *members)  # fmt: skip
    with open("/dev/md/espvm-root", "r+b") as array:
        size = array.seek(0, os.SEEK_END)
        array.seek(0)
        array.write(hashlib.sha256(b"root").digest() * (size // 32))
    sh("mdadm", "--stop", "/dev/md/espvm-root")


def make(live: str, other: str, *, stale: bool, target: str = TARGET) -> dict[str, str]:
    """The machine before esp-mirror: live ESP on ``live``, ``other`` with a stale copy or blank.
    Returns the hashes of what is outside the ESP partitions (:func:`outside_hashes`)."""
    for disk in (other,):
        sh("wipefs", "--all", "--quiet", disk)
        sh("sgdisk", "--zap-all", disk, ok=(0, 2))
    _layout(live, LIVE_FILES, "/run/espvm-scratch", data=not stale)
    if stale:
        _layout(other, STALE_FILES, "/run/espvm-scratch", data=False)
        _root_array(f"{live}2", f"{other}2")
    for rel in ("etc/mdadm", "boot/efi", "usr/sbin"):
        os.makedirs(os.path.join(target, rel), exist_ok=True)
    shutil.copy2(
        "/usr/sbin/mdadm", os.path.join(target, "usr/sbin/mdadm")
    )  # an installed system's, which adopt asks for
    uuid = sh("blkid", "-s", "UUID", "-o", "value", f"{live}1").stdout.strip()
    fstab = Path(target, "etc/fstab")
    kept = [line for line in (fstab.read_text().splitlines() if fstab.exists() else []) if "/boot/efi" not in line]
    fstab.write_text("".join(f"{line}\n" for line in kept) + f"UUID={uuid}  /boot/efi  vfat  umask=0077  0  1\n")
    Path(target, "etc/mdadm/mdadm.conf").write_text("HOMEHOST <system>\nMAILADDR root\n")
    sh("mount", f"{live}1", esp(target))
    for number in re.findall(r"^Boot([0-9A-F]{4})\*? (debian|.*\(esp-mirror )", sh("efibootmgr").stdout, re.M):
        sh("efibootmgr", "--quiet", "--bootnum", number[0], "--delete-bootnum")
    sh("efibootmgr", "--quiet", "--create", "--disk", live, "--part", "1", "--label", "debian",
       "--loader", "\\EFI\\debian\\grubx64.efi")  # fmt: skip
    return outside_hashes([live, other] if stale else [live])


def argv(cli: str, disks: Sequence[str], efi_image: str, target: str = TARGET) -> list[str]:
    out = [cli, "adopt", "--yes", "--profile", "debian"]
    for disk in disks:
        out += ["--disk", disk]
    return [*out, "--target", target, "--bootloader", "efi", "--efi-image", efi_image, "--initramfs", "skip",
            "--esp-size", f"{ESP_MIB}M"]  # fmt: skip


def checks(disks: Sequence[str], efi_image: str, outside: dict[str, str], target: str = TARGET) -> list[str]:
    """What is wrong after an adoption ran to its end; empty when all is right."""
    wrong = []
    detail = dict(line.split("=", 1) for line in sh("mdadm", "--detail", "--export", "/dev/md/esp").stdout.split())
    members = sorted(v for k, v in detail.items() if k.endswith("_DEV"))
    if members != sorted(f"{d}1" for d in disks):
        wrong.append(f"members {members}")
    md = Path("/sys/block", os.path.basename(os.path.realpath("/dev/md/esp")), "md")
    state = [(md / name).read_text().strip() for name in ("degraded", "sync_action")]
    if state != ["0", "idle"]:
        wrong.append(f"array degraded {state[0]}, {state[1]}")
    mount = sh("findmnt", "-n", "-o", "SOURCE", esp(target), ok=(0, 1)).stdout.strip()
    if mount != os.path.realpath("/dev/md/esp"):
        wrong.append(f"{esp(target)} is mounted from {mount or 'nothing'}")
    for rel, data in LIVE_FILES.items():
        path = Path(esp(target), rel)
        if rel in REPLACED:
            data = Path(efi_image).read_bytes()
        if not path.is_file() or hashlib.sha256(path.read_bytes()).digest() != hashlib.sha256(data).digest():
            wrong.append(f"{rel} is not on the array as it was")
    if Path(esp(target), "EFI/debian/only-on-the-stale-copy").exists():
        wrong.append("a file of the stale copy is on the array")
    lines = [
        x for x in Path(target, "etc/fstab").read_text().splitlines() if "/boot/efi" in x and not x.startswith("#")
    ]
    if len(lines) != 1 or not lines[0].startswith("UUID=") or "nofail" not in lines[0]:
        wrong.append(f"fstab lines for the ESP: {lines}")
    arrays = [x for x in Path(target, "etc/mdadm/mdadm.conf").read_text().splitlines() if x.startswith("ARRAY")]
    if len(arrays) != 1:
        wrong.append(f"{len(arrays)} ARRAY lines in mdadm.conf")
    entries = sh("efibootmgr").stdout
    for disk in disks:
        serial = Path(f"/sys/block/{os.path.basename(disk)}/serial").read_text().strip()
        count = entries.count(f"(esp-mirror {serial})")
        if count != 1:
            wrong.append(f"{count} boot entries for {disk}")
    if Path(target, "var/lib/esp-mirror/adopt.json").exists():
        wrong.append("the journal is still there")
    if not Path(target, "var/lib/esp-mirror/adopt", f"esp-{os.path.basename(disks[0])}1.tar").is_file():
        wrong.append("no backup of the live ESP's files")
    changed = [disk for disk, digest in outside_hashes(disks).items() if outside.get(disk, digest) != digest]
    if changed:
        wrong.append(f"bytes outside the ESP partition changed on {changed}")
    sh("sync")
    fsck = sh("fsck.fat", "-n", "/dev/md/esp", ok=(0, 1))
    if fsck.returncode and "Dirty bit" not in fsck.stdout:
        wrong.append(f"fsck.fat -n: {fsck.stdout.strip().splitlines()[-1:]}")
    return wrong


def reset(disks: Sequence[str], target: str = TARGET) -> None:
    """Take down what an adoption (or a part of one) made, before the machine is made again."""
    for mountpoint in (esp(target), "/run/esp-mirror/adopt", *Path("/run/esp-mirror").glob("adopt-read-*")):
        sh("umount", str(mountpoint), ok=(0, 1, 32))
    sh("mdadm", "--stop", "--scan", ok=(0, 1))
    sh("rm", "-f", "/dev/md/esp")
    for disk in disks:
        for node in (f"{disk}1", f"{disk}2"):
            if os.path.exists(node):
                sh("wipefs", "--all", "--quiet", node)
        sh("sgdisk", "--zap-all", disk, ok=(0, 2))
        sh("partx", "--delete", disk, ok=(0, 1))
    sh("rm", "-rf", os.path.join(target, "etc/esp-mirror"), os.path.join(target, "var/lib/esp-mirror"))
    conf = Path(target, "etc/fstab")
    if conf.exists():
        conf.write_text("".join(f"{x}\n" for x in conf.read_text().splitlines() if "/boot/efi" not in x))
