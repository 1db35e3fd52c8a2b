"""Installed Debian systems in the guest: the README installer's install, and the test unit that
reports each firmware boot of an installed system.

The README install (tests/vm/test_readme_installer.py), the way a real installer does it, all of
it inside a qemu guest, since only the guest kernel has md:

1. On the host: the cached initramfs-tools root (ci/roots.py) gets what an installed machine
   has (/etc/default/grub with a serial console, the root's fstab line, a machine id) plus a test
   unit that reports the boot on ttyS0 and powers off; it is split into two tar archives (the
   base system; the kernel and mdadm, see ci/readme_installer.py), handed to the guest as two
   raw disks.
2. In the guest, first two refusals on extra disks: two disks that report one serial, and two
   loop devices on one image file (``esp-mirror apply``: exit 2, every byte unchanged). Then the
   README's ``install(disks, target, installer)`` runs as written with :class:`RaidRootInstaller`:
   ``pre_partition``; the installer's partition 2 on both disks, an md RAID1 root (metadata 1.2),
   ext4, mounted at /target; ``post_format``; the base system unpacked; the kernel and mdadm
   unpacked and the root array listed in mdadm.conf; ``initramfs_config`` (one
   update-initramfs); ``bootloader`` (grub-install with the fallback path, one NVRAM entry per
   disk, and GRUB's configuration). The installer runs nothing after the hooks.

Firmware boots of an installed system (:func:`boot_installed`: the README install's Debian 12,
and ci/chroot_install.py's Debian 13): OVMF, shim or GRUB from the ESP, the kernel and initramfs
from the RAID1 root, systemd up to multi-user, where the test unit prints the state (mdstat, what
/boot/efi is mounted from, boot timings) and runs the actions the boot's SMBIOS OEM strings name,
in this order: :data:`FALLBACK_ACTION` (the entries shim's fallback made, folded), heal
(:data:`HEAL_ACTION`: nobody runs a command until ``esp-mirror status`` says healthy; then the
root's member back by hand), :data:`UPGRADE_ACTION` (what GRUB's and shim's package upgrades run,
from a clean chroot), :data:`REPLACE_ACTION` (``replace --copy-table`` onto a blank disk, then
the printed ``mdadm --add`` lines), :data:`RELEASE_ALL_ACTION` (``release --all``, then a reboot:
the actions named ``after_reboot(...)`` run in the boot after it), :data:`ADOPT_ACTION` (adopt
with the ESP unmounted, then adopt and apply again), :data:`SDBOOT_ACTION` (systemd-boot behind
shim, its postinst, its update service, a kernel installed with apt whoever runs it). Then it powers off.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ci.readme_installer import SystemArchives, run_readme_install, split_system
from ci.roots import Root, writable_view
from ci.vm import Assets, GuestResult, VmError, blank_disk, run_in_guest
from ci.vm.qemu import run_qemu
from ci.vm.scripts import REPO_ROOT, esp_mirror_cli

DISK_MIB = 2048  # 1 MiB + 512 MiB ESP + the root partition (~1.5 GiB) + the backup GPT
ROOT_FS_MIB = 1280  # the root ext4; the partition leaves room for md's 1.2 data offset
ROOT_FS_UUID = "5e1ec7ed-0e5b-4d1e-9a11-e5b0075e5b00"
MACHINE_ID = "e5b0e5b0e5b0e5b0e5b0e5b0e5b0e5b0"
ROOT_FSTAB_LINE = f"UUID={ROOT_FS_UUID}\t/\text4\terrors=remount-ro\t0\t1\n"
STATE = "ESPVM-STATE"
END = "ESPVM-STATE-END"
REBOOT = "ESPVM-STATE-REBOOT"  # an action restarts the system (release-all): the same boot goes on
UPGRADE_ACTION = "espvm-action=upgrade"  # SMBIOS OEM strings (type 11) the test unit reads
HEAL_ACTION = "espvm-action=heal"
FALLBACK_ACTION = "espvm-action=fallback"
ADOPT_ACTION = "espvm-action=adopt"
REPLACE_ACTION = "espvm-action=replace"
RELEASE_ALL_ACTION = "espvm-action=release-all"  # reboots: the actions after it are after_reboot(...)
SDBOOT_ACTION = "espvm-action=sdboot"
SECTION = "@@@ "

# What boots this system: GRUB with no menu delay, the kernel's console on the serial port, and
# no "quiet", so the serial log shows where a boot waits.
DEFAULT_GRUB = """\
# esp-mirror installed-system test: no menu delay, console on the first serial port.
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=ttyS0,115200"
GRUB_TERMINAL=console
GRUB_DISABLE_OS_PROBER=true
"""

# Runs once multi-user.target is reached (Type=simple: the boot does not wait for it), waits for
# the boot to finish, reports on the serial port and powers off.
STATE_UNIT = """\
[Unit]
Description=esp-mirror test: report the boot state on ttyS0, then power off
After=multi-user.target

[Service]
Type=simple
ExecStart=/usr/local/sbin/espvm-state

[Install]
WantedBy=multi-user.target
"""

STATE_SCRIPT = r"""#!/bin/sh
# esp-mirror test unit: print what this boot looks like to the serial port, then power off.
exec >/dev/ttyS0 2>&1
systemctl is-system-running --wait >/dev/null 2>&1
section() {
    name=$1; shift
    echo "ESPVM-STATE @@@ $name"
    "$@" 2>&1 | sed 's/^/ESPVM-STATE | /'
}
boot_times() {
    systemctl show -p KernelTimestampMonotonic -p InitRDTimestampMonotonic \
        -p UserspaceTimestampMonotonic -p FinishTimestampMonotonic
    echo "MultiUser=$(systemctl show -P ActiveEnterTimestampMonotonic multi-user.target)"
    echo "BootEfiMount=$(systemctl show -P ActiveEnterTimestampMonotonic boot-efi.mount)"
}
report() {
    section running systemctl is-system-running
    section multi-user systemctl is-active multi-user.target
    section failed systemctl --failed --no-legend --plain
    section mdstat cat /proc/mdstat
    section esp-mount findmnt -n -o SOURCE,FSTYPE,OPTIONS /boot/efi
    section root-mount findmnt -n -o SOURCE,FSTYPE,OPTIONS /
    section esp-detail mdadm --detail --export /dev/md/esp
    section root-detail mdadm --detail --export /dev/md/root
    section analyze systemd-analyze
    section times boot_times
    section md-kernel sh -c "dmesg | grep -E 'md/raid1|md: |kicking'"
    section fs-kernel sh -c "dmesg | grep -E 'EXT4-fs|FAT-fs|I/O error|remount|device role|md12[0-9]'"
    section md-journal sh -c "journalctl -b -o short-monotonic --no-pager | grep -iE 'mdadm|last-resort|boot-efi|efi.mount|boot/efi|fat-fs' | head -40"
    section heal-boot sh -c "journalctl -b -o cat --no-pager -u esp-mirror-heal.service | tail -n 12"
    section efibootmgr efibootmgr
    section cmdline cat /proc/cmdline
    section kernel uname -r
    section secure-boot sh -c "mokutil --sb-state; dmesg | grep -iE 'secure ?boot' | head -n 3"
}
# A boot's actions are SMBIOS OEM strings; one that reboots (release-all) leaves the stage in a
# file, and the same strings name what runs after the reboot ("espvm-action=after-reboot:NAME").
stage_file=/var/lib/espvm-stage
stage=$(cat "$stage_file" 2>/dev/null || echo first)
rm -f "$stage_file"
action() {
    prefix=; [ "$stage" = after-reboot ] && prefix=after-reboot:
    # the raw table: a 5-byte header (its last byte the string count), then the strings, NUL-ended
    cat /sys/firmware/dmi/entries/11-*/raw 2>/dev/null | tr '\0' '\n' |
        grep -qaE "(^|[^[:print:]])espvm-action=$prefix$1\$"
}
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v s="$1" '{printf "%.1f\n", $1 - s}' /proc/uptime; }
esp_mirror=/usr/local/sbin/esp-mirror  # the copy apply put on the installed system
# A rescue system's chroot, an agent without PAM: nothing in the environment but a PATH.
clean() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive /usr/sbin/chroot / "$@"; }
# A login shell: pam_env gives it /etc/environment.
login() { su --login root --command "$*"; }
upgrade() {
    # What an upgrade of grub-efi-amd64 runs (its postinst, as dpkg-reconfigure runs it), with an
    # old loader at the fallback path as a previous GRUB would have left it; then update-grub. Both
    # from a rescue system's clean chroot: no variable of a login, of systemd or of this unit.
    efibootmgr -v | grep -v '^BootCurrent' > /tmp/nvram-before
    printf 'a stale loader from an older GRUB\n' > /boot/efi/EFI/BOOT/BOOTX64.EFI
    start=$(now)
    clean dpkg-reconfigure -f noninteractive grub-efi-amd64 > /tmp/reconfigure.log 2>&1
    echo "exit $?"
    echo "seconds $(since "$start")"
    tail -n 20 /tmp/reconfigure.log
    # and what upgrades of the signed chain run: shim's postinst (grub-install again), and the
    # signed GRUB's (it has no maintainer script: its upgrades come with grub-efi-amd64's)
    printf 'a stale shim\n' > /boot/efi/EFI/BOOT/BOOTX64.EFI
    for package in shim-signed grub-efi-amd64-signed; do
        clean dpkg-reconfigure -f noninteractive $package > /tmp/reconfigure.log 2>&1
        echo "$package exit $?"
        tail -n 4 /tmp/reconfigure.log
    done
    clean update-grub > /tmp/update-grub.log 2>&1
    echo "update-grub exit $?"
    efibootmgr -v | grep -v '^BootCurrent' > /tmp/nvram-after
    diff /tmp/nvram-before /tmp/nvram-after && echo "nvram unchanged"
    cmp /boot/efi/EFI/BOOT/BOOTX64.EFI /boot/efi/EFI/debian/shimx64.efi && echo "fallback is shim"
    for f in grubx64.efi mmx64.efi fbx64.efi; do
        cmp "/boot/efi/EFI/BOOT/$f" "/usr/lib/shim/$f.signed" 2>/dev/null && echo "fallback has $f (shim's)"
        cmp "/boot/efi/EFI/BOOT/$f" "/boot/efi/EFI/debian/$f" 2>/dev/null && echo "fallback has $f (the loader's)"
    done
    echo "csv: $(iconv -f UTF-16LE -t UTF-8 /boot/efi/EFI/debian/BOOTX64.CSV 2>/dev/null | tr -d '\r\n\357\273\277')"
    echo "files:"; (cd /boot/efi/EFI && find BOOT debian -type f | sort)
}
installed_check() {
    start=$(now)
    "$esp_mirror" check
    echo "exit $?"
    echo "seconds $(since "$start")"
}
heal_wait() {
    # Nobody runs a command: esp-mirror-heal.service (at boot) and the udev rule bring the
    # member back. Wait for `esp-mirror status` to say healthy, at most 180 s.
    start=$(now)
    until "$esp_mirror" status >/dev/null 2>&1; do
        [ "$(since "$start" | cut -d. -f1)" -ge 180 ] && break
        sleep 2
    done
    multi=$(systemctl show -P ActiveEnterTimestampMonotonic multi-user.target)
    echo "healthy after multi-user: $(awk -v m="$multi" '{printf "%.1f", $1 - m / 1e6}' /proc/uptime) s"
    echo "heal service exited after multi-user: $(systemctl show -P ExecMainExitTimestampMonotonic esp-mirror-heal.service | awk -v m="$multi" '{printf "%.1f", ($1 - m) / 1e6}') s"
}
older_sd_boot() {
    # an older systemd-boot on the ESP, as a package upgrade finds it: its version strings, one down
    # (every one: bootctl reads the one in ".sdmagic", "#### LoaderInfo: systemd-boot 257.13 ####")
    python3 -c 'import re, sys, pathlib
for name in sys.argv[1:]:
    f = pathlib.Path(name)
    if f.exists():
        f.write_bytes(re.sub(rb"systemd-boot (\d+)\.", lambda m: b"systemd-boot %d." % (int(m[1]) - 1), f.read_bytes()))' \
        /boot/efi/EFI/systemd/systemd-bootx64.efi /boot/efi/EFI/BOOT/BOOTX64.EFI
}
root_back() {
    # The installer's root array is not esp-mirror's: its member that stayed behind (md left it
    # out at this boot) comes back by hand, as a new member (mdadm will not turn a member that
    # says it is active into a spare), before a kernel is installed: its modules live on the
    # root, and systemd-boot later starts that kernel from each disk alone.
    for member in /dev/vda2 /dev/vdb2; do
        grep -q "${member#/dev/}\[" /proc/mdstat && continue
        mdadm --zero-superblock "$member" && mdadm /dev/md/root --add "$member"
    done
    start=$(now)
    mdadm --wait /dev/md/root
    echo "root in sync after $(since "$start") s"
    grep -A2 '^md.*vd.2' /proc/mdstat
}
sdboot() {
    # then what systemd-boot's package and a kernel package run on their own
    echo "environment: SYSTEMD_RELAX_ESP_CHECKS=${SYSTEMD_RELAX_ESP_CHECKS:-unset}"
    older_sd_boot
    start=$(now)
    systemctl restart systemd-boot-update.service
    echo "update exit $? seconds $(since "$start")"
    journalctl -b -u systemd-boot-update.service -o cat | tail -n 5
    signed=/usr/lib/systemd/boot/efi/systemd-bootx64.efi.signed
    cmp /boot/efi/EFI/systemd/systemd-bootx64.efi "$signed" && echo "sd-boot updated"
    # shim stays at the fallback path: bootctl update refreshes only copies of systemd-boot
    cmp /boot/efi/EFI/BOOT/BOOTX64.EFI /usr/lib/shim/shimx64.efi.signed && echo "fallback still shim"
    echo "diversion: $(dpkg-divert --list /usr/bin/bootctl)"
    echo "seed writer: $(readlink /etc/systemd/system/systemd-boot-random-seed.service)"
    # GRUB no longer starts this system: its kernel hooks (update-grub, ~30 s each under TCG) are
    # switched off, as removing GRUB's packages would
    chmod a-x /etc/kernel/postinst.d/zz-update-grub /etc/kernel/postrm.d/zz-update-grub 2>/dev/null
    # initramfs images for this machine's own drivers, as many servers build them: under TCG
    # mkinitramfs with MODULES=most takes most of a kernel install's time
    sed -i 's/^MODULES=.*/MODULES=dep/' /etc/initramfs-tools/initramfs.conf
}
# The second kernel's package (linux-image-*-cloud-amd64) in /root: ci/roots.py's TRIXIE root has it.
second_deb=$(ls /root/linux-image-*-cloud-amd64_*.deb 2>/dev/null)
second=$(dpkg-deb -f "$second_deb" Package 2>/dev/null)
second_kver=${second#linux-image-}
on_esp() {
    echo "kernel files: $(find /boot/efi -path "*/$second_kver/*" -type f | sort | tr '\n' ' ')"
    echo "entries: $(grep -l -- "$second_kver" /boot/efi/loader/entries/*.conf 2>/dev/null | tr '\n' ' ')"
}
kernel() {
    # $1: login or clean; the rest: apt-get's arguments
    how=$1; shift
    start=$(now)
    $how apt-get --yes --no-install-recommends "$@" > /tmp/kernel.log 2>&1
    echo "exit $? seconds $(since "$start")"
    grep -iE "esp|systemd-boot|error|warn" /tmp/kernel.log | tail -n 12
    on_esp
}
stray() {
    # the real bootctl, run by hand without the wrapper (no --no-variables), as the update service
    # runs it: it adds "Linux Boot Manager", whose device path names no partition, first in
    # BootOrder (update copies, and so writes the entry, only over an older systemd-boot; without
    # --graceful, bootctl 257 stops with exit 1 before the variables, the fallback path being shim's)
    older_sd_boot
    SYSTEMD_RELAX_ESP_CHECKS=1 /usr/bin/bootctl.esp-mirror --esp-path=/boot/efi --graceful update > /tmp/bootctl.log 2>&1
    echo "bootctl update exit $?"
    grep -v '^Skipping' /tmp/bootctl.log | tail -n 4
    echo "made: $(efibootmgr -v | grep -c 'Linux Boot Manager')"
    "$esp_mirror" status > /tmp/status.log 2>&1
    echo "status exit $?"
    grep -i "stray\|linux boot manager" /tmp/status.log
    "$esp_mirror" entries --yes --json > /tmp/entries.json 2>&1
    echo "entries exit $? changed $(python3 -c 'import json; print(json.load(open("/tmp/entries.json"))["changed"])')"
    "$esp_mirror" entries --yes --json > /tmp/entries.json 2>&1
    echo "entries again exit $? changed $(python3 -c 'import json; print(json.load(open("/tmp/entries.json"))["changed"])')"
    echo "left: $(efibootmgr -v | grep -c 'Linux Boot Manager')"
    efibootmgr
}
stopped() {
    # the ESP's array stopped: a kernel's hooks and apt must stop with esp-mirror's message, and
    # leave what the ESP and NVRAM hold alone
    ls /boot/efi/loader/entries > /tmp/entries-before
    efibootmgr -v | grep -v '^BootCurrent' > /tmp/nvram-before
    umount /boot/efi && mdadm --stop /dev/md/esp
    run-parts --report --exit-on-error --arg="$second_kver" --arg="/boot/vmlinuz-$second_kver" /etc/kernel/postinst.d
    echo "kernel hooks exit $?"
    clean apt-get --yes --reinstall install "$second_deb" > /tmp/apt.log 2>&1
    echo "apt exit $?"
    grep esp-mirror /tmp/apt.log
    echo "package: $(dpkg-query -W -f '${db:Status-Abbrev}' "$second")"
    mdadm --assemble --scan 2>&1
    mount /boot/efi
    echo "mounted: $(findmnt -n -o SOURCE /boot/efi)"
    ls /boot/efi/loader/entries | diff /tmp/entries-before - && echo "entries untouched"
    efibootmgr -v | grep -v '^BootCurrent' | diff /tmp/nvram-before - && echo "nvram untouched"
}
adopt() {
    # What an administrator runs on a machine with one ESP, which fstab names and nothing mounts
    # (an administrator unmounted it; a system that mounts it on demand): esp-mirror adopts it
    # with the disks. Its files first, as they are, for the checks after.
    cli=/root/esp-mirror
    [ -x /usr/local/sbin/esp-mirror ] && cli=/usr/local/sbin/esp-mirror
    echo "program: $cli"
    (cd /boot/efi && find . -type f -exec sha256sum {} + | sort -k2) > /root/esp-before.sha256
    umount /boot/efi
    echo "mounted before: $(findmnt -n -o SOURCE /boot/efi || echo nothing)"
    start=$(now)
    "$cli" adopt --yes --disk /dev/vda --disk /dev/vdb --initramfs skip > /tmp/adopt.log 2>&1
    echo "exit $?"
    echo "seconds $(since "$start")"
    cat /tmp/adopt.log
}
backup_files() {
    # every file of the live ESP, by sha256, in the backup adopt kept (read from the tar)
    python3 -c 'import hashlib, sys, tarfile
with tarfile.open(sys.argv[1]) as tar:
    for m in sorted(tar.getmembers(), key=lambda m: m.name):
        if m.isfile():
            print(hashlib.sha256(tar.extractfile(m).read()).hexdigest() + "  " + m.name)' /var/lib/esp-mirror/adopt/esp-vda1.tar
}
release_all() {
    # back to one ESP: the first disk's partition, a plain FAT that fstab names
    start=$(now)
    "$esp_mirror" release --all --yes > /tmp/release.log 2>&1
    echo "exit $? seconds $(since "$start")"
    tail -n 25 /tmp/release.log
    echo "fstab: $(grep -v '^#' /etc/fstab | grep -E '[[:space:]]/boot/efi[[:space:]]')"
    echo "array lines: $(grep -c '^ARRAY .*esp' /etc/mdadm/mdadm.conf)"
    echo "esp mounted from: $(findmnt -n -o SOURCE /boot/efi)"
    echo "record: $(ls /etc/esp-mirror/esp-mirror.yaml 2>&1)"
    for p in /dev/vda1 /dev/vdb1; do echo "$p: $(blkid -p -s TYPE -s UUID -o value $p | tr '\n' ' ')"; done
    efibootmgr -v
}
sdboot13() {
    # Debian 13's way to systemd-boot under Secure Boot: systemd-boot signed by Debian, started by
    # shim (the target has shim-signed and systemd-boot-efi-amd64-signed). GRUB's signed package
    # stays: Debian marks it essential, and apt will not remove it without --allow-remove-essential.
    start=$(now)
    "$esp_mirror" apply --yes --profile debian --disk /dev/vda --disk /dev/vdb --target / \
        --bootloader systemd-boot --initramfs skip > /tmp/apply.log 2>&1
    echo "apply exit $? seconds $(since "$start")"
    tail -n 5 /tmp/apply.log
    efibootmgr -v | grep -v '^BootCurrent' > /tmp/nvram-before
    # what every upgrade of systemd-boot runs (its postinst), from a rescue system's clean chroot
    start=$(now)
    clean dpkg-reconfigure -f noninteractive systemd-boot > /tmp/reconfigure.log 2>&1
    echo "reconfigure exit $? seconds $(since "$start")"
    tail -n 8 /tmp/reconfigure.log
    efibootmgr -v | grep -v '^BootCurrent' > /tmp/nvram-after
    diff /tmp/nvram-before /tmp/nvram-after && echo "nvram unchanged"
    echo "entries starting shim: $(efibootmgr | grep -ci 'shimx64.efi')"
    cmp /boot/efi/EFI/BOOT/BOOTX64.EFI /usr/lib/shim/shimx64.efi.signed && echo "fallback is shim"
    cmp /boot/efi/EFI/BOOT/fbx64.efi /usr/lib/shim/fbx64.efi.signed && echo "fallback has fbx64.efi"
    cmp /boot/efi/EFI/systemd/systemd-bootx64.efi /usr/lib/systemd/boot/efi/systemd-bootx64.efi.signed && echo "systemd-boot is the signed build"
    # printf, not dash's echo, which reads the "\0" at the end of the argument as a NUL
    printf 'csv: %s\n' "$(iconv -f UTF-16LE -t UTF-8 /boot/efi/EFI/debian/BOOTX64.CSV 2>/dev/null | tr -d '\r\n')"
    printf 'record: %s\n' "$(grep -E '^loader(_args)?:' /etc/esp-mirror/esp-mirror.yaml | tr '\n' ' ')"
}
adopted_again() {
    /usr/local/sbin/esp-mirror adopt --yes --disk /dev/vda --disk /dev/vdb --initramfs skip; echo "adopt exit $?"
    /usr/local/sbin/esp-mirror apply --yes --json --disk /dev/vda --disk /dev/vdb --initramfs skip > /tmp/apply.json
    echo "apply exit $?"
    python3 -c 'import json, sys; r = json.load(open("/tmp/apply.json")); print("changed", r["changed"]); [print("changed:", s["group"], s["step"]) for s in r["steps"] if s["changed"]]'
}
fallback() {
    # after a boot through shim's fallback (fbx64.efi), with NVRAM that had no entry before
    echo "entries before: $(efibootmgr -v | grep -E '^Boot[0-9A-F]{4}' | grep -v -E 'UiApp|EFI Internal Shell|UEFI ' | tr '\t' ' ' | tr '\n' ';')"
    "$esp_mirror" status > /tmp/status.log 2>&1
    echo "status exit $?"
    cat /tmp/status.log
    "$esp_mirror" entries --yes --json > /tmp/entries.json 2>&1
    echo "entries exit $? changed $(python3 -c 'import json; print(json.load(open("/tmp/entries.json"))["changed"])')"
    "$esp_mirror" entries --yes --json > /tmp/entries.json 2>&1
    echo "entries again exit $? changed $(python3 -c 'import json; print(json.load(open("/tmp/entries.json"))["changed"])')"
    efibootmgr -v
}
replace_copy() {
    # disk B died: a blank disk took its place (it is /dev/vdb now). esp-mirror gives it A's
    # partition table (new GUIDs) and makes the ESP's member; then the administrator runs the
    # `mdadm --add` line it printed for the root's array, as the runbook says.
    echo "root before: $(mdadm --detail /dev/md/root | grep -E 'State :' | tr -s ' ')"
    start=$(now)
    "$esp_mirror" replace --old missing --new /dev/vdb --copy-table --yes > /tmp/replace.log 2>&1
    echo "replace exit $? seconds $(since "$start")"
    cat /tmp/replace.log
    sed -n 's/^  \(mdadm \/dev\/md.*\)$/\1/p' /tmp/replace.log > /tmp/add-lines  # the printed lines
    while read -r line; do echo "run: $line"; $line; echo "exit $?"; done < /tmp/add-lines
    mdadm --wait /dev/md/root; mdadm --wait /dev/md/esp
    echo "root after: $(mdadm --detail /dev/md/root | grep -E 'State :' | tr -s ' ')"
    echo "root members: $(mdadm --detail /dev/md/root | grep -oE '/dev/vd[a-z][0-9]+' | sort | tr '\n' ' ')"
    "$esp_mirror" status; echo "status exit $?"
    for d in vda vdb; do echo "$d: $(sgdisk -p /dev/$d | awk '/^ +[0-9]+ /{print $1, $2, $3, $6}' | tr '\n' ';')"; done
    for d in vda vdb; do echo "$d guid: $(sgdisk -p /dev/$d | sed -n 's/^Disk identifier (GUID): //p')"; done
    efibootmgr -v
}
disks() { for d in /sys/block/vd*; do echo "$(basename "$d") $(cat "$d/serial") $(readlink -f "$d")"; done; }
report
section stage echo "$stage"
section disks disks
section efibootmgr-v efibootmgr -v
if action fallback; then
    section fallback fallback
fi
if action heal; then
    section heal heal_wait
    section status sh -c "$esp_mirror status; echo \"exit \$?\""
    section heal-journal sh -c "journalctl -b -o short-monotonic --no-pager -u esp-mirror-heal.service -u 'esp-mirror-heal@*' | tail -n 20"
    section mdstat-after cat /proc/mdstat
    section esp-detail-after mdadm --detail --export /dev/md/esp
    section root-back root_back
fi
if action upgrade; then
    section upgrade upgrade
    section installed-version "$esp_mirror" --version
    section installed-check installed_check
    section debconf sh -c "debconf-show grub-efi-amd64 | grep -E 'update_nvram|extra_removable'"
fi
if action replace; then
    section replace replace_copy
fi
if action release-all; then
    section release-all release_all
    echo after-reboot > "$stage_file"; sync
    echo "ESPVM-STATE-REBOOT"
    systemctl reboot --no-block
    exit 0
fi
if action adopt; then
    section adopt adopt
    section adopted-again adopted_again
    section status sh -c "/usr/local/sbin/esp-mirror status; echo \"exit \$?\""
    section old-files sh -c "cd /boot/efi && sha256sum --check --quiet /root/esp-before.sha256; echo \"exit \$?\""
    section backup-files backup_files
    section esp-before cat /root/esp-before.sha256
    section efibootmgr-after efibootmgr -v
    section fstab-after cat /etc/fstab
    section backups sh -c "ls /var/lib/esp-mirror/adopt"
    section mdstat-after cat /proc/mdstat
fi
if action sdboot; then
    section sdboot13 sdboot13
    section sdboot sdboot
    section stray stray
    section kernel-login kernel login install "$second_deb"
    section kernel-login-check installed_check
    section kernel-remove kernel login remove "$second"
    section kernel-clean kernel clean install "$second_deb"
    section sdboot-check installed_check
    section stopped stopped
fi
echo "ESPVM-STATE-END"
systemctl poweroff --no-block
"""


def after_reboot(action: str) -> str:
    """The SMBIOS string for ``action`` ("espvm-action=NAME") run in the stage after an action
    rebooted the system (RELEASE_ALL_ACTION): "espvm-action=after-reboot:NAME"."""
    return action.replace("espvm-action=", "espvm-action=after-reboot:", 1)


# Serial output that means the installed system will not reach multi-user.
_BOOT_FAILED = {
    "ALERT!  ": "the initramfs did not find the root file system",
    "\n(initramfs) ": "the initramfs could not mount the root file system and started its shell",
    "You are in emergency mode": "systemd fell back to emergency mode",
    "Kernel panic": "the kernel panicked",
    "grub rescue>": "GRUB did not find its modules or the root file system",
    "Shell> ": "the firmware found nothing to boot and started its UEFI shell",
}


@dataclass(frozen=True)
class TargetImage:
    path: Path
    seconds: float  # to customise the root and make the ext4 image (mke2fs -d)


def root_image(view: Path, image: Path, size_mib: int = ROOT_FS_MIB, uuid: str = ROOT_FS_UUID) -> Path:
    """An ext4 image of the directory ``view`` (``mke2fs -d``: no mount, no loop device)."""
    image.unlink(missing_ok=True)
    subprocess.run(
        ["mke2fs", "-q", "-t", "ext4", "-d", str(view), "-U", uuid, "-L", "root", str(image), f"{size_mib}M"],
        check=True,
        capture_output=True,
    )
    return image


def _customize(view: Path) -> None:
    """What makes the cached root an installed machine of this test."""
    (view / "etc/default").mkdir(exist_ok=True)
    (view / "etc/default/grub").write_text(DEFAULT_GRUB)
    (view / "etc/fstab").write_text(ROOT_FSTAB_LINE)
    (view / "etc/hostname").write_text("espvm-installed\n")
    (view / "etc/machine-id").write_text(MACHINE_ID + "\n")  # not a first boot: no firstboot prompts
    script = view / "usr/local/sbin/espvm-state"
    script.write_text(STATE_SCRIPT)
    script.chmod(0o755)
    (view / "etc/systemd/system/espvm-state.service").write_text(STATE_UNIT)
    wants = view / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "espvm-state.service").symlink_to("/etc/systemd/system/espvm-state.service")
    # the test unit writes to ttyS0; a login prompt there would only get in its way
    (view / "etc/systemd/system/serial-getty@ttyS0.service").symlink_to("/dev/null")


def build_target_image(root: Root, workdir: Path) -> TargetImage:
    """The installed system's root file system as an ext4 image, from the cached root."""
    started = time.monotonic()
    with writable_view(root, workdir / "target-view") as view:
        _customize(view)
        image = root_image(view, workdir / "target-root.img")
    return TargetImage(image, time.monotonic() - started)


def build_target_archives(root: Root, workdir: Path) -> SystemArchives:
    """The installed system as the two archives the README installer unpacks."""
    with writable_view(root, workdir / "archive-view") as view:
        _customize(view)
        return split_system(view, root.kver, workdir)


def guest_python_argv(*args: str) -> list[str]:
    """Run this module in the guest with the test's interpreter (the project's venv, over 9p)."""
    return ["env", f"PYTHONPATH={REPO_ROOT}", sys.executable, "-m", "ci.installed", *args]


# The guest's disks for the install: the two to install on, the two archives, two "twins" that
# report one serial (virtio serial from the image name: *-twin.img -> espvm-TWIN).
INSTALL_DISKS = ("/dev/vda", "/dev/vdb")
BASE_DISK, PACKAGES_DISK = "/dev/vdc", "/dev/vdd"
TWIN_DISKS = ("/dev/vde", "/dev/vdf")


class RaidRootInstaller:
    """The installer's own steps in the README example: a RAID1 root on partition 2 of both
    disks, Debian unpacked in two parts the way a package manager installs it (files already
    there, like the fstab and mdadm.conf esp-mirror wrote, are kept)."""

    def __init__(self, disks: Sequence[str], target: str) -> None:
        self.disks, self.target = list(disks), target

    @staticmethod
    def run(*argv: str) -> None:
        print(f"installer: {shlex.join(argv)}", flush=True)
        subprocess.run(argv, check=True)

    @staticmethod
    def phase(name: str) -> None:
        uptime = Path("/proc/uptime").read_text().split()[0]
        print(f"{SECTION}phase {name} {uptime}", flush=True)

    def make_root_filesystem(self) -> None:
        self.phase("root_filesystem")
        parts = [f"{disk}2" for disk in self.disks]
        for disk in self.disks:
            self.run("sgdisk", "--new=2:0:0", "--typecode=2:FD00", "--change-name=2:root", disk)
        for part in parts:
            for _ in range(100):
                if os.path.exists(part):
                    break
                time.sleep(0.1)
        # --assume-clean: every block the system uses is written through the array, to both members
        self.run(
            "mdadm",
            "--create",
            "/dev/md/root",
            "--run",
            "--level=1",
            "--raid-devices=2",
            "--metadata=1.2",
            "--homehost=any",
            "--name=root",
            "--assume-clean",
            *parts,
        )
        self.run("mkfs.ext4", "-q", "-F", "-U", ROOT_FS_UUID, "-L", "root", "/dev/md/root")
        self.run("mount", "/dev/md/root", self.target)
        self.phase("post_format")

    def install_base_system(self) -> None:
        self.phase("base_system")
        self.run("tar", "-x", "--skip-old-files", "-f", BASE_DISK, "-C", self.target)
        # the archive's fstab was skipped (esp-mirror's is there already): the installer adds its
        # own line for the root, as genfstab or an installer's fstab writer would
        with open(f"{self.target}/etc/fstab", "a") as fstab:
            fstab.write(ROOT_FSTAB_LINE)

    def install_kernel_and_mdadm(self) -> None:
        self.phase("kernel_and_mdadm")
        self.run("tar", "-x", "--skip-old-files", "-f", PACKAGES_DISK, "-C", self.target)
        detail = subprocess.run(
            ["mdadm", "--detail", "--brief", "/dev/md/root"], check=True, capture_output=True, text=True
        ).stdout
        with open(f"{self.target}/etc/mdadm/mdadm.conf", "a") as conf:  # the installer's own array
            conf.write(detail)
        self.phase("initramfs_config")


# What the test reads back in the guest after the installer (esp-mirror's bootloader hook wrote
# GRUB's configuration: the installer runs nothing after the hooks).
FINISH_AND_REPORT = r"""
phase() { echo "@@@ phase $1 $(cut -d' ' -f1 /proc/uptime)"; }
phase report
for fs in dev proc sys; do mount --bind /$fs /target/$fs; done
echo '@@@ mdadm.conf'; cat /target/etc/mdadm/mdadm.conf
echo '@@@ fstab'; cat /target/etc/fstab
echo '@@@ efibootmgr'; efibootmgr -v
echo '@@@ esp-files'; find /target/boot/efi -type f | sort
echo '@@@ initramfs'; chroot /target lsinitramfs /boot/initrd.img-$(ls /target/lib/modules) | grep -E 'mdadm|raid1' || true
echo '@@@ image-mdadm.conf'; rm -rf /tmp/unpacked; chroot /target unmkinitramfs /boot/initrd.img-$(ls /target/lib/modules) /tmp/unpacked; cat /target/tmp/unpacked/etc/mdadm/mdadm.conf /target/tmp/unpacked/main/etc/mdadm/mdadm.conf 2>/dev/null || true
echo '@@@ grub.cfg'; grep -E '^\s*(linux|search|insmod (mdraid|diskfilter|part_gpt|ext2))' /target/boot/grub/grub.cfg
echo '@@@ esp-blkid'; blkid -p -o export /dev/md/esp
echo '@@@ detail-esp'; mdadm --detail --export /dev/md/esp
echo '@@@ detail-root'; mdadm --detail --export /dev/md/root
echo '@@@ mdstat'; cat /proc/mdstat
phase unmount
for fs in sys proc dev; do umount /target/$fs; done
umount /target/boot/efi; umount /target
mdadm --stop /dev/md/esp; mdadm --stop /dev/md/root; sync
phase end
"""


def _refused_apply(name: str, disks: Sequence[str]) -> str:
    """apply on ``disks`` (shell words: device paths or "$variables"): its exit code, and
    whether every byte of the disks is as it was."""
    argv = shlex.join(
        [
            str(esp_mirror_cli()),
            "apply",
            "--yes",
            "--target",
            "/tmp/nothing",
            "--bootloader",
            "efi",
            "--efi-image",
            "/tmp/nothing/x.efi",
            "--initramfs",
            "skip",
            "--no-nvram",
        ]
    )
    argv += "".join(f" --disk {disk}" for disk in disks)
    hashes = f"sha256sum {' '.join(disks)}"
    return (
        f"echo '{SECTION}{name}'; before=$({hashes}); rc=0; {argv} 2>&1 || rc=$?; echo \"exit=$rc\"; "
        f'after=$({hashes}); [ "$before" = "$after" ] && echo unchanged || echo CHANGED'
    )


def install_script() -> str:
    """The guest script: the two refusals, then the README installer, then finish and report."""
    return "\n".join(
        [
            "set -eu",
            "mkdir -p /target /tmp/nothing && printf MZ > /tmp/nothing/x.efi",
            f"echo '{SECTION}twin-serials'; for d in vde vdf; do cat /sys/block/$d/serial; echo; done",
            _refused_apply("twins", TWIN_DISKS),
            "truncate -s 64M /tmp/one.img; a=$(losetup --find --show /tmp/one.img); b=$(losetup --find --show /tmp/one.img)",
            f"echo '{SECTION}loop-devices'; echo \"$a $b\"",
            _refused_apply("loops", ('"$a"', '"$b"')),
            'losetup --detach "$a"; losetup --detach "$b"',
            f"echo '{SECTION}install'",
            shlex.join(guest_python_argv("install", *INSTALL_DISKS)) + " 2>&1",
            FINISH_AND_REPORT,
        ]
    )


@dataclass(frozen=True)
class Installed:
    guest: GuestResult
    sections: dict[str, str]
    phases: dict[str, float]  # guest uptime at the start of each phase

    def phase_seconds(self, name: str) -> float:
        names = list(self.phases)
        return self.phases[names[names.index(name) + 1]] - self.phases[name]


def parse_sections(text: str, prefix: str = "") -> tuple[dict[str, str], dict[str, float]]:
    """Split output at "@@@ NAME" lines (after ``prefix``); "@@@ phase NAME UPTIME" are phases."""
    sections: dict[str, str] = {}
    phases: dict[str, float] = {}
    name = None
    for line in text.splitlines():
        if prefix:
            if not line.startswith(prefix):
                continue
            line = line[len(prefix) :].lstrip()
            if line.startswith("| "):
                line = line[2:]
            elif line == "|":
                line = ""
        if line.startswith(SECTION):
            words = line[len(SECTION) :].split()
            if words and words[0] == "phase" and len(words) == 3:
                phases[words[1]] = float(words[2])
                continue
            name = " ".join(words)
            sections[name] = ""
        elif name is not None:
            sections[name] += line + "\n"
    return sections, phases


def install(
    workdir: Path, archives: SystemArchives, vars_file: Path, *, assets: Assets | None = None, timeout: float = 1500
) -> tuple[list[Path], Installed]:
    """Install onto two blank disks (disk-a.img, disk-b.img) in a guest; the install's NVRAM is ``vars_file``."""
    disks = [blank_disk(workdir / f"disk-{name}.img", DISK_MIB) for name in "ab"]
    twins = [blank_disk(workdir / f"{name}-twin.img", 64) for name in "ef"]
    guest = run_in_guest(
        install_script(),
        [*disks, archives.base, archives.kernel_and_mdadm, *twins],
        vars_file,
        timeout=timeout,
        assets=assets,
        log_dir=workdir,
    )
    sections, phases = parse_sections(guest.stdout)
    return disks, Installed(guest, sections, phases)


def systemd_boot_script(payload: Path, *, seed_after: bool = False, target_disk: str = "/dev/vdc") -> str:
    """A guest script: esp-mirror with ``--bootloader systemd-boot`` onto a target root (an ext4
    disk), a unified kernel image as sd-boot's one entry (\\EFI\\Linux\\, found by sd-boot itself).

    ``seed_after`` creates ``\\loader\\random-seed`` afterwards the way Debian 12's
    systemd-boot-system-token.service does on real hardware (``bootctl random-seed``, which finds
    the md ESP only with relaxed checks), to show what the loader does with it on the next boot.
    """
    apply = [
        str(esp_mirror_cli()),
        "apply",
        "--yes",
        "--profile",
        "debian",
        "--disk",
        "/dev/vda",
        "--disk",
        "/dev/vdb",
        "--target",
        "/target",
        "--bootloader",
        "systemd-boot",
        "--initramfs",
        "skip",
    ]
    lines = [
        "set -eu",
        f"mkdir -p /target; mount {target_disk} /target",
        "echo '@@@ apply'",
        shlex.join(apply) + " 2>&1",
        "echo '@@@ loader'; find /target/boot/efi -type f | sort",
        "echo '@@@ masked'; readlink /target/etc/systemd/system/systemd-boot-random-seed.service || true",
        "echo '@@@ units'; ls /target/lib/systemd/system | grep -E '^systemd-boot-(random-seed|system-token)' || true",
        "for fs in dev proc sys; do mount --bind /$fs /target/$fs; done",
        # what Debian 12's systemd-boot-system-token.service runs (bootctl random-seed --graceful):
        # does it find the md ESP, and does it write a seed file?
        (
            "echo '@@@ random-seed-strict'; rc=0; chroot /target bootctl random-seed --graceful 2>&1 || rc=$?; "
            'echo "exit $rc"'
        ),
        "echo '@@@ after-strict'; ls /target/boot/efi/loader",
    ]
    if seed_after:
        lines += [
            (
                "echo '@@@ random-seed-relaxed'; rc=0; SYSTEMD_RELAX_ESP_CHECKS=1 chroot /target bootctl "
                'random-seed --graceful 2>&1 || rc=$?; echo "exit $rc"'
            ),
            "echo '@@@ after-relaxed'; ls /target/boot/efi/loader",
            # sd-boot 252 uses (and rewrites) the seed only with a system token, which bootctl
            # stores in NVRAM on real hardware but not in a VM; "always" stands in for that.
            "echo 'random-seed-mode always' >> /target/boot/efi/loader/loader.conf",
        ]
    lines += [
        f"mkdir -p /target/boot/efi/EFI/Linux; cp {shlex.quote(str(payload))} /target/boot/efi/EFI/Linux/espvm.efi",
        "for fs in sys proc dev; do umount /target/$fs; done",
        "umount /target/boot/efi; umount /target; mdadm --wait /dev/md/esp || true; mdadm --stop /dev/md/esp; sync",
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class InstalledBoot:
    """What the installed system reported on the serial port after a firmware boot."""

    sections: dict[str, str]
    seconds: float  # power on to power off, measured on the host (every run, with resets)
    serial_log: Path
    resets: int = 0  # the firmware reset before the system came up (shim's fallback)
    earlier: tuple[dict[str, str], ...] = ()  # the reports of the stages before a reboot an action made

    def section(self, name: str) -> str:
        return self.sections.get(name, "")

    def detail(self, array: str, after: bool = False) -> dict[str, str]:
        text = self.section(f"{array}-detail" + ("-after" if after else ""))
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def times(self) -> dict[str, float]:
        """Seconds since the kernel started, from systemd's monotonic timestamps."""
        raw = dict(line.split("=", 1) for line in self.section("times").splitlines() if "=" in line)
        return {k.replace("TimestampMonotonic", ""): int(v) / 1e6 for k, v in raw.items() if v.strip().isdigit()}

    def mdstat_line(self, name: str, after: bool = False) -> str:
        """The /proc/mdstat status line ("... [2/2] [UU]") of the array whose members are partition N."""
        text = self.section("mdstat-after" if after else "mdstat")
        number = {"esp": "1", "root": "2"}[name]
        blocks = re.split(r"\n(?=md\d+ :|unused devices)", text)
        for block in blocks:
            if re.match(rf"md\d+ : active (\(auto-read-only\) )?raid1 (vd[ab]{number}\[\d\](\(\w\))? ?)+", block):
                return " ".join(block.split())
        return ""


def boot_installed(
    disks: Sequence[Path],
    vars_file: Path,
    log_dir: Path,
    *,
    name: str,
    assets: Assets | None = None,
    action: str | Sequence[str] = (),
    snapshot: bool = False,
    timeout: float = 600,
    secure_boot: bool = False,
    resets: int = 0,
) -> InstalledBoot:
    """Power on with only ``disks`` and the NVRAM ``vars_file`` and wait for the test unit's report.

    :param action: SMBIOS OEM strings for the test unit (:data:`ADOPT_ACTION`, :data:`UPGRADE_ACTION`,
        :data:`HEAL_ACTION`): what it does after its report.
    :param snapshot: write nothing to the disk images or the NVRAM file (qemu -snapshot).
    :param secure_boot: OVMF's Secure Boot build (enforcing with an NVRAM that has keys).
    :param resets: how many times the machine may reset before the system comes up (shim's
        fallback makes an entry and resets): qemu stops at a reset (-no-reboot) and is started
        again with the same disks and NVRAM; each earlier run's serial log is kept beside.
    :raises VmError: when the system did not report within ``timeout``, or showed a boot failure.
    """
    assets = assets or Assets.ensure()
    run_dir = log_dir / f"boot-{name}"
    run_dir.mkdir(parents=True, exist_ok=True)
    serial_log = run_dir / "serial.log"
    actions = (action,) if isinstance(action, str) else tuple(action)
    extra = (["-smbios", "type=11," + ",".join(f"value={a}" for a in actions)] if actions else []) + (
        ["-snapshot"] if snapshot else []
    )
    seconds, reset = 0.0, 0
    earlier: list[dict[str, str]] = []  # what the system reported before it rebooted itself
    while True:
        run = run_qemu(
            assets,
            disks=disks,
            vars_file=vars_file,
            serial_log=serial_log,
            timeout=timeout,
            extra_args=extra,
            give_up_on=_BOOT_FAILED,
            secure_boot=secure_boot,
            again_if_frozen=lambda: None,
        )
        seconds += run.seconds
        text = serial_log.read_text(errors="replace")
        if REBOOT in text and END not in text and len(earlier) < 2:  # an action rebooted the system
            earlier.append(parse_sections(text, prefix=STATE)[0])
            serial_log.rename(run_dir / f"serial-before-reboot-{len(earlier)}.log")
            continue
        if END in text or reset >= resets or STATE in text:  # the system came up: no firmware reset
            break
        reset += 1
        serial_log.rename(run_dir / f"serial-before-reset-{reset}.log")
    if END not in text:
        raise VmError(f"the installed system powered off without its {END} report; serial log: {serial_log}")
    sections, _ = parse_sections(text, prefix=STATE)
    return InstalledBoot(sections, seconds, serial_log, reset, tuple(earlier))


def copy_sparse(source: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "--sparse=always", str(source), str(dest)], check=True)
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    """In the guest: ``install DISK...`` runs the README's installer example onto /target."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["install"] and len(args) >= 3:
        RaidRootInstaller.phase("pre_partition")
        run_readme_install(tuple(args[1:]), "/target", RaidRootInstaller(args[1:], "/target"))
        return 0
    print("usage: python -m ci.installed install DISK DISK...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "ADOPT_ACTION",
    "FALLBACK_ACTION",
    "HEAL_ACTION",
    "RELEASE_ALL_ACTION",
    "REPLACE_ACTION",
    "SDBOOT_ACTION",
    "UPGRADE_ACTION",
    "Installed",
    "InstalledBoot",
    "TargetImage",
    "after_reboot",
    "boot_installed",
    "build_target_archives",
    "build_target_image",
    "copy_sparse",
    "install",
    "systemd_boot_script",
]
