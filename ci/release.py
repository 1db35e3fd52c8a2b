"""The VM proof of ``esp-mirror release`` on the installed Debian of ci/installed.py: the guest
shell for its test unit, what to parse out of its report, and what to assert. Not wired into a
boot yet: the lead engineer adds it to a shared boot (tests/vm/test_installed_system.py).

The installed system (ci/adopted.py's machine, after its adoption) has disks /dev/vda and
/dev/vdb (disk-a.img, disk-b.img: serials espvm-A, espvm-B), an md RAID1 root on partition 2 and
the mirrored ESP on partition 1, esp-mirror at /usr/local/sbin/esp-mirror. Its test unit
(ci/installed.py ``STATE_SCRIPT``) prints its report, then runs the blocks whose action the
boot's SMBIOS OEM strings name. This module adds two actions:

- :data:`RELEASE_DISK_ACTION`: ``esp-mirror release --disk /dev/vdb --yes`` first, which a mirror
  of two refuses (exit 2, nothing changed: releasing B would leave a mirror of one, see
  docs/operating.md "Going back: release"); then ``release --disk /dev/vdb --one-member --yes``,
  and what it left: /proc/mdstat, ``blkid -p`` of /dev/vdb1 and of the array, ``mdadm --examine``
  and ``fsck.fat -n`` of /dev/vdb1, ``efibootmgr -v``, fstab, the ESP's mount, ``esp-mirror
  status`` and ``heal`` (which must not take /dev/vdb1 back), and ``entries --dry-run`` (which
  must leave B's entry alone).
- :data:`RELEASE_ALL_ACTION`: ``esp-mirror release --all --dry-run``, then ``--yes``, and what it
  left: mdstat, blkid of both partitions, ``efibootmgr -v``, fstab, mdadm.conf, the ESP's mount,
  ``esp-mirror status`` (exit 2: not set up), esp-mirror's files left on the system, the failed
  units after ``systemctl daemon-reload``, and a GRUB upgrade run as a rescue system runs it
  (``dpkg-reconfigure grub-efi-amd64`` from ``env -i chroot``), which must install onto the plain
  ESP with nothing of esp-mirror's in its way. That last part is GRUB's: run the action on the
  system before boot 5 of tests/vm/test_installed_system.py moves it to systemd-boot, or drop
  the two ``release-all-upgrade`` lines there (on systemd-boot, ``bootctl update`` is the upgrade
  to try, and the diversion's undoing is what to look at: ``dpkg-divert --list /usr/bin/bootctl``).

Wiring (:func:`with_release` does 1 and 2 on a copy of the script):

1. In ci/installed.py, ``STATE_SCRIPT`` gets :data:`FUNCTIONS` after its other shell functions
   and :data:`ACTIONS` before ``echo "ESPVM-STATE-END"``: write
   ``script.write_text(release.with_release(STATE_SCRIPT))`` in ``_customize``. The blocks run
   only when a boot's action names them, so every other boot is unchanged.
2. A boot with ``action=RELEASE_DISK_ACTION`` on both disks, with a copy of the NVRAM the
   adoption left (``_boot(scene, "release-disk", scene.machine.disks, action=...)``), after the
   boots that need the mirror whole; then :func:`check_release_disk` on what it reported. It
   changes the disks for good: give it its own copies of the disk images (ci/installed.py
   ``copy_sparse``) when later boots still need the mirror of two.
3. **The released disk boots alone**: power on with disk B alone and the NVRAM that boot 2 left
   (copy its vars file), ``snapshot=True``: ``boot_installed([disk_b], vars, work,
   name="released-b-alone", snapshot=True, secure_boot=True)``; then :func:`check_released_alone`.
   The firmware's first entry is esp-mirror's for disk A, which is not attached, so it goes on to
   ``Debian (espvm-B)``, B's own entry on its plain ESP: shim, GRUB, the kernel from the root
   (RAID1, degraded: B's member only). Alone, disk B is /dev/vda in the guest (its serial is still
   espvm-B). fstab names the array's FAT, which is not on B: /boot/efi stays unmounted (nofail),
   and esp-mirror-heal.service fails after its 60 s wait for the array (the root still holds
   esp-mirror's record: B left the mirror, the machine did not): expected, and checked so.
4. A boot with ``action=RELEASE_ALL_ACTION`` on both disks (or disk A alone after step 2: A's
   array of one) and :func:`check_release_all`; then disk A alone (``snapshot=True``) and
   :func:`check_plain_esp_boot`, and disk B alone likewise: each disk's partition is a plain ESP
   that boots, A's mounted at /boot/efi from its own partition, no unit failed.

Each check raises AssertionError naming what it found; the serial logs say the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from esp_mirror_plugin.system import nvram

if TYPE_CHECKING:
    from ci.installed import InstalledBoot

RELEASE_DISK_ACTION = "espvm-action=release-disk"
RELEASE_ALL_ACTION = "espvm-action=release-all"
ESP_MOUNT = "/boot/efi"

# Shell functions of the test unit (they use its section, now, since, clean and $esp_mirror).
FUNCTIONS = r"""
release_run() {
    # esp-mirror release with the arguments given: its exit code, its time, its output
    start=$(now)
    "$esp_mirror" release "$@" > /tmp/release.log 2>&1
    echo "exit $?"
    echo "seconds $(since "$start")"
    cat /tmp/release.log
}
exit_of() { "$@" > /tmp/exit-of.log 2>&1; echo "exit $?"; cat /tmp/exit-of.log; }
esp_mirror_files() {
    # what of esp-mirror is left on the system (its program and manual page stay)
    for f in /etc/esp-mirror/esp-mirror.yaml /etc/esp-mirror/debconf.preseed /var/lib/esp-mirror/release.json \
             /etc/systemd/system/esp-mirror-heal.service /etc/systemd/system/esp-mirror-heal@.service \
             /etc/udev/rules.d/65-esp-mirror-heal.rules /etc/systemd/system/esp-mirror-check.timer \
             /etc/systemd/system/esp-mirror-metrics.timer /usr/local/lib/esp-mirror/esp-mounted \
             /etc/apt/apt.conf.d/90esp-mirror /etc/kernel/postinst.d/00-esp-mirror /usr/bin/bootctl.esp-mirror \
             /usr/local/sbin/esp-mirror /usr/local/share/man/man8/esp-mirror.8; do
        [ -e "$f" ] && echo "left: $f"
    done
    grep -l "BEGIN esp-mirror" /etc/fstab /etc/mdadm/mdadm.conf /etc/environment /etc/kernel/install.conf \
        2>/dev/null | sed 's/^/block: /'
    systemctl list-unit-files --no-legend 'esp-mirror*' | sed 's/^/unit: /'
    echo "done"
}
grub_upgrade() {
    # what an upgrade of grub-efi-amd64 runs, from a rescue system's clean chroot
    clean dpkg-reconfigure -f noninteractive grub-efi-amd64 > /tmp/reconfigure.log 2>&1
    echo "exit $?"
    tail -n 8 /tmp/reconfigure.log
}
"""

# The blocks run when the boot's action names them (before the report's end marker).
ACTIONS = r"""
if action release-disk; then
    section release-two-refused release_run --disk /dev/vdb --yes
    section release-disk release_run --disk /dev/vdb --one-member --yes
    section release-mdstat cat /proc/mdstat
    section release-blkid-b blkid -p -o export /dev/vdb1
    section release-blkid-array blkid -p -o export /dev/md/esp
    section release-examine-b exit_of mdadm --examine /dev/vdb1
    section release-fsck-b exit_of fsck.fat -n /dev/vdb1
    section release-efibootmgr efibootmgr -v
    section release-fstab cat /etc/fstab
    section release-esp-mount findmnt -n -o SOURCE,FSTYPE,OPTIONS /boot/efi
    section release-status exit_of "$esp_mirror" status
    section release-heal exit_of "$esp_mirror" heal
    section release-entries exit_of "$esp_mirror" entries --dry-run --json
    section release-journal exit_of ls /var/lib/esp-mirror/release.json
fi
if action release-all; then
    section release-all-dry exit_of "$esp_mirror" release --all --dry-run
    section release-all release_run --all --yes
    section release-all-mdstat cat /proc/mdstat
    section release-all-blkid-a blkid -p -o export /dev/vda1
    section release-all-blkid-b blkid -p -o export /dev/vdb1
    section release-all-efibootmgr efibootmgr -v
    section release-all-fstab cat /etc/fstab
    section release-all-mdadm-conf cat /etc/mdadm/mdadm.conf
    section release-all-esp-mount findmnt -n -o SOURCE,FSTYPE,OPTIONS /boot/efi
    section release-all-status exit_of "$esp_mirror" status
    section release-all-files esp_mirror_files
    section release-all-failed sh -c "systemctl daemon-reload; systemctl --failed --no-legend --plain"
    section release-all-upgrade grub_upgrade
    section release-all-efibootmgr-after efibootmgr -v
fi
"""


def with_release(script: str) -> str:
    """The test unit's script with :data:`FUNCTIONS` before its report and :data:`ACTIONS` before
    its end marker (ci/installed.py ``STATE_SCRIPT``)."""
    end = 'echo "ESPVM-STATE-END"'
    if "\nreport\n" not in script or end not in script:
        raise ValueError("not the installed system's state script: no `report` line or no end marker")
    script = script.replace("\nreport\n", f"\n{FUNCTIONS.strip()}\nreport\n", 1)
    return script.replace(end, f"{ACTIONS.strip()}\n{end}", 1)


# -- reading the report -----------------------------------------------------------------------------


def export(text: str) -> dict[str, str]:
    """``blkid -o export`` or ``mdadm --export`` output as a dict."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def exit_code(text: str) -> int | None:
    """The ``exit N`` line a section printed first, or None."""
    found = re.search(r"^exit (\d+)$", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def entries(text: str) -> list[nvram.BootEntry]:
    """The boot entries of ``efibootmgr -v`` output (esp-mirror's own parser)."""
    return list(nvram.parse(text).entries)


def booted_label(text: str) -> str | None:
    """The label of the entry the firmware started (BootCurrent) in ``efibootmgr -v`` output."""
    state = nvram.parse(text)
    entry = state.entry(state.current) if state.current else None
    return entry.label if entry else None


def fstab_lines(text: str) -> list[list[str]]:
    """The fields of each line of fstab that mounts something (no comments, no blank lines)."""
    return [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@dataclass(frozen=True)
class Mdstat:
    """/proc/mdstat, per array: its status line ("active raid1 vda1[0]" and "[1/1] [U]")."""

    arrays: dict[str, str]  # md127 -> the array's lines joined

    @classmethod
    def parse(cls, text: str) -> Mdstat:
        blocks = re.split(r"\n(?=md\d+ :|unused devices)", text)
        return cls({b.split()[0]: " ".join(b.split()) for b in blocks if re.match(r"md\d+ :", b)})

    def with_partition(self, number: int) -> list[str]:
        """The arrays whose members are partition ``number`` of the vd disks."""
        return [line for line in self.arrays.values() if re.search(rf"\bvd[a-z]{number}\[\d+\]", line)]


# -- what the boots must show ---------------------------------------------------------------------------


def check_release_disk(boot: InstalledBoot) -> None:
    """After ``release --disk /dev/vdb``: refused without ``--one-member``, done with it; B's
    partition a plain FAT with an id of its own and its own entry; the mirror of A whole."""
    refused = boot.section("release-two-refused")
    assert exit_code(refused) == 2 and "--one-member" in refused, refused
    done = boot.section("release-disk")
    assert exit_code(done) == 0, done
    b, array = export(boot.section("release-blkid-b")), export(boot.section("release-blkid-array"))
    assert b.get("TYPE") == "vfat", b  # no linux_raid_member: the superblock is gone
    assert array.get("TYPE") == "vfat" and b.get("UUID") and b["UUID"] != array.get("UUID"), (b, array)
    examine = boot.section("release-examine-b")
    assert exit_code(examine) != 0 and "No md superblock" in examine, examine
    assert exit_code(boot.section("release-fsck-b")) == 0, boot.section("release-fsck-b")
    esp = Mdstat.parse(boot.section("release-mdstat")).with_partition(1)
    assert len(esp) == 1 and "vdb1" not in esp[0] and "[1/1] [U]" in esp[0], esp  # whole, one member
    partuuid = b.get("PART_ENTRY_UUID", "").lower()
    own = [e for e in entries(boot.section("release-efibootmgr")) if e.partuuid == partuuid]
    assert len(own) == 1 and own[0].label.endswith("(espvm-B)") and "esp-mirror" not in own[0].label, own
    [line] = [f for f in fstab_lines(boot.section("release-fstab")) if f[1:2] == [ESP_MOUNT]]
    assert line[0] == f"UUID={array['UUID']}", line  # fstab names the array's FAT, as before
    mount = boot.section("release-esp-mount").split()
    assert len(mount) == 3 and re.fullmatch(r"/dev/md\d+", mount[0]) and mount[1] == "vfat", mount
    assert exit_code(boot.section("release-status")) == 0, boot.section("release-status")
    heal = boot.section("release-heal")
    assert exit_code(heal) == 0 and "nothing to heal" in heal, heal
    listed = boot.section("release-entries")
    assert exit_code(listed) == 0 and '"would_change": 0' in listed, listed
    assert exit_code(boot.section("release-journal")) != 0  # the journal is gone


def check_released_alone(boot: InstalledBoot) -> None:
    """Disk B alone after its release: the firmware started B's own entry, the system came up on
    the degraded root; B's ESP partition (/dev/vda1 when alone) is a plain FAT with its own id,
    not mounted (fstab names the array's FAT); heal's wait for the array is the one failed unit."""
    label = booted_label(boot.section("efibootmgr-v") or boot.section("efibootmgr"))
    assert label is not None and label.endswith("(espvm-B)") and "esp-mirror" not in label, label
    assert boot.section("multi-user").strip() == "active", boot.serial_log
    assert boot.section("esp-mount").strip() == "", boot.section("esp-mount")
    root = Mdstat.parse(boot.section("mdstat")).with_partition(2)
    assert len(root) == 1 and "[2/1]" in root[0], root
    failed = [line.split()[0] for line in boot.section("failed").splitlines() if line.strip()]
    assert failed in ([], ["esp-mirror-heal.service"]), failed
    assert "espvm-B" in boot.section("disks"), boot.section("disks")


def check_release_all(boot: InstalledBoot) -> None:
    """After ``release --all``: no ESP array, each partition a plain FAT (A with the array's FAT
    id, which fstab names in a line of its own), mounted from A's partition, every disk's entry
    its own, nothing of esp-mirror's left but its program and manual page, no failed unit, and a
    GRUB upgrade that installs onto the plain ESP."""
    assert exit_code(boot.section("release-all-dry")) == 0, boot.section("release-all-dry")
    assert exit_code(boot.section("release-all")) == 0, boot.section("release-all")
    assert Mdstat.parse(boot.section("release-all-mdstat")).with_partition(1) == [], boot.section("release-all-mdstat")
    a, b = export(boot.section("release-all-blkid-a")), export(boot.section("release-all-blkid-b"))
    assert a.get("TYPE") == b.get("TYPE") == "vfat" and a.get("UUID") != b.get("UUID"), (a, b)
    fstab = boot.section("release-all-fstab")
    assert "esp-mirror" not in fstab, fstab
    [line] = [f for f in fstab_lines(fstab) if f[1:2] == [ESP_MOUNT]]
    assert line[0] == f"UUID={a['UUID']}" and line[2] == "vfat", line
    conf = boot.section("release-all-mdadm-conf")
    assert "esp-mirror" not in conf and "/dev/md/esp" not in conf and "MAILADDR" in conf, conf
    mount = boot.section("release-all-esp-mount").split()
    assert mount[:2] == ["/dev/vda1", "vfat"], mount
    assert exit_code(boot.section("release-all-status")) == 2, boot.section("release-all-status")
    left = boot.section("release-all-files").splitlines()
    assert left == ["left: /usr/local/sbin/esp-mirror", "left: /usr/local/share/man/man8/esp-mirror.8", "done"], left
    assert boot.section("release-all-failed").strip() == "", boot.section("release-all-failed")
    nvram_text = boot.section("release-all-efibootmgr")
    listed = entries(nvram_text)
    assert [e for e in listed if "esp-mirror" in e.label] == [], listed
    for disk, found in (("A", a), ("B", b)):
        own = [e for e in listed if e.partuuid == found["PART_ENTRY_UUID"].lower()]
        assert len(own) == 1 and own[0].label.endswith(f"(espvm-{disk})"), (disk, own)
    order = nvram.parse(nvram_text).order
    first = next(e for e in listed if e.number == order[0])
    assert first.partuuid == a["PART_ENTRY_UUID"].lower(), (first, order)  # the ESP's disk first
    upgrade = boot.section("release-all-upgrade")
    assert exit_code(upgrade) == 0 and "esp-mirror" not in upgrade, upgrade
    after = boot.section("release-all-efibootmgr-after")
    assert entries(after) == listed, after  # the upgrade left NVRAM alone (debconf's update_nvram stays false)


def check_plain_esp_boot(boot: InstalledBoot, disk: str) -> None:
    """A boot after ``release --all`` from ``disk`` ("A" or "B") alone: its own entry started it,
    multi-user is up with no failed unit; A's boot mounts its partition at /boot/efi, B's finds
    fstab's ESP missing (it is on A) and goes on (nofail)."""
    label = booted_label(boot.section("efibootmgr-v") or boot.section("efibootmgr"))
    assert label is not None and label.endswith(f"(espvm-{disk})") and "esp-mirror" not in label, label
    assert boot.section("multi-user").strip() == "active", boot.serial_log
    assert boot.section("failed").strip() == "", boot.section("failed")
    mount = boot.section("esp-mount").split()
    if disk == "A":
        assert mount[:2] == ["/dev/vda1", "vfat"], mount  # alone, the disk is /dev/vda
    else:
        assert mount == [], mount


__all__ = [
    "ACTIONS",
    "FUNCTIONS",
    "RELEASE_ALL_ACTION",
    "RELEASE_DISK_ACTION",
    "Mdstat",
    "booted_label",
    "check_plain_esp_boot",
    "check_release_all",
    "check_release_disk",
    "check_released_alone",
    "entries",
    "exit_code",
    "export",
    "fstab_lines",
    "with_release",
]
