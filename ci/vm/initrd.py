"""Initrds for the guest: a static busybox, a few kernel modules and a generated /init.

The cpio archive (newc format) is written directly by Python, so building needs no root, no
staging directory and gives the same bytes for the same inputs.

Two initrds exist:

* the installer initrd boots a guest that chroots into the host's own root (shared read-only over
  9p, with a tmpfs overlay on top) and runs ``guest.sh`` from a read-write 9p share, see guest.py;
* the payload initrd is what the EFI payload (payload.py) runs after a firmware boot: it prints
  the EFI variables that tell how it was booted to the serial port; then, when qemu shares the
  host root (``run_after_firmware_boot``), it goes on like the installer initrd and runs
  ``guest.sh`` on the system the firmware just booted; otherwise it powers off.
"""

from __future__ import annotations

import gzip
import io
import stat
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

from ci.vm.assets import Assets
from ci.vm.command import run_command

# Mount tags and guest paths shared with guest.py.
HOSTROOT_TAG = "hostroot"
WORK_TAG = "work"
GUEST_WORK_DIR = "/run/espvm-work"

VAR_MARKER = "ESPVM-VAR"
DONE_MARKER = "ESPVM-DONE"
HANG_MARKER = "ESPVM-HANG-DUMP"
BEAT_MARKER = "ESPVM-BEAT"  # each heartbeat line on ttyS1 (qemu.py)
EFI_GLOBAL_GUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"

INSTALLER_MODULES = (
    "efivarfs", "virtio_pci", "virtio_blk", "md_mod", "raid1", "fat", "vfat", "nls_cp437",
    "nls_iso8859_1", "nls_utf8", "loop", "9p", "9pnet_virtio", "overlay", "ext4",
)  # fmt: skip

_GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Shared start of both /init scripts; {insmods} is filled in per initrd.
_INIT_PREAMBLE = """\
#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /run
/bin/busybox --install -s /bin
export PATH=/bin
die() {{ echo "ESPVM-INIT-ERROR: $*"; poweroff -f; }}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
{insmods}
mount -t efivarfs efivarfs /sys/firmware/efi/efivars || die "no efivarfs: not booted through UEFI?"
"""

# Runs $GUEST_WORK_DIR/guest.sh chrooted into host root (read-only 9p + tmpfs overlay).
_INSTALLER_BODY = """\
# Disk names like udev's from the virtio serials qemu was given (disks are vda, vdb, ... in
# qemu's order; the serial follows the image, e.g. espvm-C for disk-c.img).
mkdir -p /dev/disk/by-id
for serial in /sys/block/vd*/serial; do
    [ -e "$serial" ] || continue
    dev=${{serial%/serial}}; dev=${{dev##*/}}
    ln -s ../../$dev /dev/disk/by-id/virtio-$(cat $serial)
done
opts=trans=virtio,version=9p2000.L,msize=262144
# cache=loose is safe for the read-only host root: each boot mounts it afresh.
mkdir -p /lower /rw /newroot
mount -t 9p -o $opts,ro,cache=loose {hostroot} /lower || die "cannot mount the host root over 9p"
mount -t tmpfs tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot \\
    || die "cannot mount the overlay"
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t efivarfs efivarfs /newroot/sys/firmware/efi/efivars
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
# A fresh /run (the host's state is not the guest's). /tmp stays: host paths there, like
# pytest's tmp_path, are visible to the guest like all others; writes go to the overlay.
mount -t tmpfs tmpfs /newroot/run
mkdir -p /newroot{work} /newroot/usr/lib/modules/{kver}
mount -t 9p -o $opts {work_tag} /newroot{work} || die "cannot mount the work share over 9p"
# The guest's modprobe finds every module of the guest kernel in the (host) cache, and so does
# the kernel when it loads one on demand (e.g. nls_ascii for a vfat mount).
mount -o bind /newroot{modules} /newroot/usr/lib/modules/{kver} \\
    || die "cannot see the guest kernel's modules at {modules} through the host root (not under /run?)"
printf '#!/bin/sh\nexec chroot /newroot /sbin/modprobe "$@"\n' > /bin/espvm-modprobe
chmod 755 /bin/espvm-modprobe
echo /bin/espvm-modprobe > /proc/sys/kernel/modprobe
# With espvm.dump_at=SECONDS on the command line (the host's timeout less a margin), a script still
# running then prints what every process waits for to the serial port: a CI run keeps no files,
# so a hang must name itself in the log's tail.
for word in $(cat /proc/cmdline); do
    case $word in espvm.dump_at=*) dump_at=${{word#*=}};; esac
done
[ -n "${{dump_at:-}}" ] && (
    sleep "$dump_at"
    echo "{hang_marker} guest.sh still running after $dump_at s; pid state wchan command:"
    cat /proc/mdstat
    for p in /proc/[0-9]*; do
        command=$(tr '\\0' ' ' < $p/cmdline 2>/dev/null)
        [ -n "$command" ] || continue
        set -- $(cat $p/stat 2>/dev/null)
        echo "${{p#/proc/}} $3 $(cat $p/wchan 2>/dev/null) $command"
        [ "$3" = D ] && sed 's/^/    /' $p/stack 2>/dev/null
    done
) > /dev/ttyS0 2>&1 &
# A heartbeat on the second serial port (qemu.py) every 10 s: a guest whose heartbeat stops froze
# (qemu or the kernel), which the host tells apart from a script that hangs. Each beat carries
# {beat}: OVMF and GRUB write their console to every serial port, so bytes alone prove nothing.
( while echo "{beat} $(cut -d' ' -f1 /proc/uptime)" > /dev/ttyS1; do sleep 10; done ) 2>/dev/null &
echo "ESPVM-SCRIPT-START"
read up _ < /proc/uptime
chroot /newroot /usr/bin/env -i PATH={path} HOME=/root LANG=C.UTF-8 TERM=dumb \\
    /bin/sh {work}/guest.sh >/newroot{work}/stdout 2>/newroot{work}/stderr
rc=$?
read end _ < /proc/uptime
echo "$up $end" > /newroot{work}/uptime
echo $rc > /newroot{work}/rc
sync
echo "ESPVM-SCRIPT-END rc=$rc"
poweroff -f
"""

# Prints every Boot####, BootCurrent, BootOrder, SecureBoot and systemd's Loader* variables as hex.
_PAYLOAD_BODY = """\
cd /sys/firmware/efi/efivars
for var in Boot[0-9A-F][0-9A-F][0-9A-F][0-9A-F]-{efi} BootCurrent-{efi} BootOrder-{efi} SecureBoot-{efi} \\
        LoaderDevicePartUUID-{loader} LoaderImageIdentifier-{loader}; do
    [ -e "$var" ] && echo "{var_marker} $var $(hexdump -ve '1/1 "%.2x"' "$var")" > /dev/ttyS0
done
echo "{done_marker}" > /dev/ttyS0
grep -qsx {hostroot} /sys/bus/virtio/devices/*/mount_tag || poweroff -f

"""


def _newc_entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0), ino: int = 0) -> bytes:
    """Return one cpio newc record (header, name and data, each padded to 4 bytes)."""
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    header = b"070701" + b"".join(b"%08x" % field for field in fields)
    head = header + encoded
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


def cpio_newc(files: dict[str, tuple[int, bytes]], char_devices: dict[str, tuple[int, int]]) -> bytes:
    """Return a cpio newc archive with parent directories, ``files`` (path → (mode, data)) and device nodes."""
    paths = [*files, *char_devices]
    dirs = sorted({str(Path(p).parents[i]) for p in paths for i in range(len(Path(p).parents) - 1)})
    out = io.BytesIO()
    ino = 1
    for directory in dirs:
        out.write(_newc_entry(directory, stat.S_IFDIR | 0o755, ino=ino))
        ino += 1
    for path, (mode, data) in sorted(files.items()):
        out.write(_newc_entry(path, stat.S_IFREG | mode, data, ino=ino))
        ino += 1
    for path, rdev in sorted(char_devices.items()):
        out.write(_newc_entry(path, stat.S_IFCHR | 0o600, rdev=rdev, ino=ino))
        ino += 1
    out.write(_newc_entry("TRAILER!!!", 0))
    return out.getvalue()


def insmod_order(assets: Assets, modules: Iterable[str]) -> list[tuple[Path, str]]:
    """Return (module file, parameters) in load order for ``modules`` and their dependencies, without repeats.

    Built-in modules are skipped. Parameters come from modprobe's configuration, as on a Debian host.
    """
    order: dict[Path, str] = {}
    for module in modules:
        argv = ["modprobe", "-d", str(assets.kernel_root), "-S", assets.kver, "--show-depends", module]
        for line in run_command(argv).decode().splitlines():
            words = line.split()
            if words and words[0] == "insmod":
                order.setdefault(Path(words[1]), " ".join(words[2:]))
    return list(order.items())


def _build(assets: Assets, modules: Sequence[str], body: str) -> bytes:
    """Return a gzip-compressed initrd with busybox, ``modules`` and an /init of preamble + ``body``."""
    files: dict[str, tuple[int, bytes]] = {"bin/busybox": (0o755, assets.busybox.read_bytes())}
    insmods = []
    for ko, params in insmod_order(assets, modules):
        inside = "lib/modules/" + str(ko.relative_to(assets.modules_dir))
        files[inside] = (0o644, ko.read_bytes())
        insmods.append(f"insmod /{inside} {params}".rstrip() + f' || echo "ESPVM-INIT: insmod {ko.name} failed"')
    files["init"] = (0o755, (_INIT_PREAMBLE.format(insmods="\n".join(insmods)) + body).encode())
    archive = cpio_newc(files, {"dev/console": (5, 1)})
    return gzip.compress(archive, compresslevel=6, mtime=0)


def payload_initrd(assets: Assets) -> bytes:
    """Return the payload initrd: print the boot-related EFI variables to ttyS0, then power off."""
    body = _PAYLOAD_BODY.format(
        efi=EFI_GLOBAL_GUID, loader=LOADER_GUID, var_marker=VAR_MARKER, done_marker=DONE_MARKER, hostroot=HOSTROOT_TAG
    )
    return _build(assets, INSTALLER_MODULES, body + _installer_body(assets))


@cache
def installer_initrd(assets: Assets) -> bytes:
    """Return the installer initrd: mount the host root and the work share, run guest.sh, power off."""
    return _build(assets, INSTALLER_MODULES, _installer_body(assets))


def _installer_body(assets: Assets) -> str:
    return _INSTALLER_BODY.format(
        hostroot=HOSTROOT_TAG,
        work_tag=WORK_TAG,
        work=GUEST_WORK_DIR,
        kver=assets.kver,
        modules=assets.modules_dir,
        path=_GUEST_PATH,
        hang_marker=HANG_MARKER,
        beat=BEAT_MARKER,
    )
