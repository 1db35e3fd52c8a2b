"""Kill esp-mirror at every step, run it again, and check the result (run INSIDE a guest).

``python -m ci.interrupt EFI_IMAGE HALF`` (as tests/vm/test_interrupted.py does, in two guests at
once, one per HALF) runs these loops and prints one JSON line per interruption; half 1 takes
apply's odd steps, replace, replace with the table copy and release (three blank disks), half 2 apply's
even steps, repair and apply on partitioned disks:

- apply on /dev/vda and /dev/vdb: for step N = 1, 2, ... of the plan, blank the disks and the
  files apply writes, start apply in its own process group, kill the whole group with SIGKILL
  0.3 s after apply printed the start of step N, run the same apply again, check the result;
- replace: the same for each step of `replace --old X --new Y --wipe` (X and Y swap each time, so
  every run starts from a healthy mirror without an install in between);
- repair: the same for each step of `repair --source /dev/vda`;
- replace with the table copy (half 1): `replace --old missing --new Y --copy-table --add-others`
  after a member disk died, on disks whose partitions 2 hold an md data array (a root's
  stand-in); the check adds that array whole with its data, and no entry left for the dead disk;
- apply on disks an installer partitioned (half 2): A has an empty EF00 partition 1 and a
  partition 2, B only a partition 2 (a ZFS pool's stand-in, with data); the check adds every byte
  and GPT entry of the partitions 2 unchanged;
- release --all (half 1), from a mirror apply makes before each run: no array is left, each
  partition a plain FAT starting its own entry, the first one mounted and in fstab;
- adopt (ci/adoptable.py's machine, made again before each run): half 1 with a blank second disk,
  half 2 with a stale copy of the ESP on it, adopted where it is; the check adds the live ESP's
  files on the array byte for byte and every byte outside the ESP partitions unchanged.

From step N on, the changing tools linger 0.5 s after they did their work (wrappers in
/usr/local/sbin, which esp-mirror's PATH searches first; the guest's root is a throw-away overlay),
so the kill lands after a short step's effect and before esp-mirror saw it succeed, the hardest
moment to resume from; sgdisk's wrapper also drops the new partition's node, as when a kill comes
before the kernel re-read the table. The check after each re-run: one array with both members in
sync, a FAT that `fsck.fat -n` passes, one fstab line and one mdadm.conf line for the ESP, one boot
entry per member disk, the fallback loader equal to the image, no problem `esp-mirror status` reports.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ci import adoptable
from esp_mirror_plugin.hooks.installed import COMPLETION, MANUAL
from esp_mirror_plugin.pipeline import record
from esp_mirror_plugin.pipeline.fat import fsck_problems
from esp_mirror_plugin.system.discovery import HostView
from esp_mirror_plugin.system.runner import ShRunner
from esp_mirror_plugin.system.state import RELEASE_JOURNAL
from esp_mirror_plugin.upkeep.mirror import read_mirror

CLI = str(Path(sys.prefix) / "bin" / "esp-mirror")
ESP = "/boot/efi"
LINGER = Path("/run/espvm-linger")
LINGERING = ("sgdisk", "wipefs", "mdadm", "mkfs.fat", "mkfs.vfat", "efibootmgr", "mount", "umount")
STEP_LINE = re.compile(r"^  \[[^\]]+\] (?!note: )\S")
KILL_AFTER = 0.3
SAVED = ("/etc/fstab", "/etc/mdadm/mdadm.conf")
INSTALLED = (  # written by apply
    "/usr/local/sbin/esp-mirror",
    MANUAL,
    COMPLETION,
    "/etc/udev/rules.d/65-esp-mirror-heal.rules",
)


def sh(*argv: str, ok: Sequence[int] = (0,)) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode not in ok:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done


def install_wrappers() -> None:
    """Each changing tool runs, then lingers while /run/espvm-linger exists."""
    for tool in LINGERING:
        real = next((p for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin") if os.path.exists(p := f"{d}/{tool}")), None)
        if real is None:
            continue
        drop = ""
        if tool == "sgdisk":  # the table is written; the kernel has not seen it yet
            drop = 'case "$*" in *--new=*) for d; do :; done; partx --delete --nr 1 "$d" 2>/dev/null;; esac\n'
        wrapper = Path("/usr/local/sbin", tool)
        wrapper.write_text(f'#!/bin/sh\n{real} "$@"\nrc=$?\n[ -e {LINGER} ] && {{\n{drop}sleep 0.5\n}}\nexit $rc\n')
        wrapper.chmod(0o755)


def steps_of(argv: Sequence[str]) -> int:
    """How many steps the plan of ``argv`` (apply, or an upkeep command with --dry-run) has."""
    verb = argv[1]
    plan = [argv[0], "plan", *argv[2:]] if verb == "apply" else [*argv, "--dry-run"]
    plan = [a for a in plan if a != "--yes"] + ["--json"]
    report = json.loads(sh(*plan).stdout)
    groups = report["groups"] if "groups" in report else report["plan"]
    return sum(len(g["steps"]) for g in groups)


def killed_at(argv: Sequence[str], n: int) -> str | None:
    """Run ``argv`` in its own process group; SIGKILL the group 0.3 s after step ``n`` started
    (its tools linger from then on). Returns the step's line, or None when the run ended before."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen, line = 0, None
    assert proc.stdout is not None
    for out in proc.stdout:
        if STEP_LINE.match(out):
            seen += 1
            if seen == n:
                LINGER.touch()
                line = out.strip()
                time.sleep(KILL_AFTER)
                os.killpg(proc.pid, signal.SIGKILL)
                break
    proc.wait()
    LINGER.unlink(missing_ok=True)
    return line


def checks(disks: Sequence[str], efi_image: str) -> list[str]:
    """What is wrong with the mirror of ``disks`` after a run; empty when all is right."""
    wrong = []
    detail = dict(line.split("=", 1) for line in sh("mdadm", "--detail", "--export", "/dev/md/esp").stdout.split())
    members = sorted(v for k, v in detail.items() if k.endswith("_DEV"))
    if members != [f"{d}1" for d in disks]:
        wrong.append(f"members {members}")
    md = Path("/sys/block", os.path.basename(os.path.realpath("/dev/md/esp")), "md")
    if (md / "degraded").read_text().strip() != "0" or (md / "sync_action").read_text().strip() != "idle":
        wrong.append(f"degraded {(md / 'degraded').read_text().strip()}, {(md / 'sync_action').read_text().strip()}")
    sh("sync")
    fsck = sh("fsck.fat", "-n", "/dev/md/esp", ok=(0, 1))
    if fsck.returncode and fsck_problems(fsck.stdout + fsck.stderr):
        wrong.append(f"fsck.fat -n: {fsck_problems(fsck.stdout + fsck.stderr)[0]}")
    fstab = [x for x in Path("/etc/fstab").read_text().splitlines() if ESP in x.split() and not x.startswith("#")]
    if len(fstab) != 1:
        wrong.append(f"{len(fstab)} fstab lines")
    arrays = [x for x in Path("/etc/mdadm/mdadm.conf").read_text().splitlines() if x.startswith("ARRAY /dev/md/esp")]
    if len(arrays) != 1:
        wrong.append(f"{len(arrays)} mdadm.conf lines")
    entries = sh("efibootmgr").stdout
    for disk in disks:
        serial = Path(f"/sys/block/{os.path.basename(disk)}/serial").read_text().strip()
        count = entries.count(f"(esp-mirror {serial})")
        if count != 1:
            wrong.append(f"{count} boot entries for {disk}")
    if Path(ESP, "EFI/BOOT/BOOTX64.EFI").read_bytes() != Path(efi_image).read_bytes():
        wrong.append("the fallback loader differs from the image")
    state = read_mirror(ShRunner(), record.load("/"), HostView())  # what `esp-mirror status` reads
    wrong += [f"status: {problem}" for problem in state.problems()]
    return wrong


def blank(disks: Sequence[str]) -> None:
    """Back to blank disks, the files apply writes as they were (or gone), and no entries of ours:
    every apply starts from the same state, so its plan has the same steps each time."""
    sh("umount", ESP, ok=(0, 32))
    sh("mdadm", "--stop", "--scan", ok=(0, 1))
    # without udev nothing removes the link mdadm made: left, the next plan finds the stopped
    # array's device and stops it first, one step more than the first plan (numbers shifted)
    sh("rm", "-f", "/dev/md/esp")
    for disk in disks:
        if os.path.exists(f"{disk}1"):
            sh("wipefs", "--all", "--quiet", f"{disk}1")
        sh("sgdisk", "--zap-all", disk, ok=(0, 2))
        sh("partx", "--delete", disk, ok=(0, 1))
    for path in SAVED:
        Path(path).write_bytes(Path(f"/run/espvm-saved{path.replace('/', '-')}").read_bytes())
    sh("rm", "-rf", "/etc/esp-mirror", "/var/lib/esp-mirror", *INSTALLED)
    # the units apply writes and the links `systemctl enable` makes: with a link in place the plan
    # has no enable step, and the steps would no longer be numbered as in the first plan
    for where, _, names in os.walk("/etc/systemd/system"):
        for name in names:
            if name.startswith("esp-mirror"):
                os.unlink(os.path.join(where, name))
    for number in re.findall(r"^Boot([0-9A-F]{4})\*? .*\(esp-mirror ", sh("efibootmgr").stdout, re.M):
        sh("efibootmgr", "--quiet", "--bootnum", number, "--delete-bootnum")


def loop(name: str, argv_of, before, check, steps: list[int]) -> list[dict[str, object]]:
    """For each step n: ``before(n)``, run ``argv_of(n)`` killed at step n, run it again, and
    ``check(n)`` (what is wrong; empty when all is right)."""
    results = []
    for n in steps:
        argv = argv_of(n)
        before(n)
        started = time.monotonic()
        line = killed_at(argv, n)
        killed = time.monotonic()
        again = subprocess.run(argv, capture_output=True, text=True, check=False)
        ran = time.monotonic()
        wrong = (
            [f"re-run exit {again.returncode}: {(again.stdout + again.stderr).strip().splitlines()[-6:]}"]
            if again.returncode
            else []
        )
        wrong = wrong or check(n)
        result = {"command": name, "step": n, "killed_in": line, "converged": not wrong, "wrong": wrong}
        result["seconds"] = round(time.monotonic() - started, 1)
        # the killed run, the run again, the check
        result["split"] = [round(killed - started, 1), round(ran - killed, 1), round(time.monotonic() - ran, 1)]
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def apply_argv(efi_image: str, cli: str = CLI) -> list[str]:
    """The two-disk apply every loop and power cut uses (a 64 MiB ESP: quick to make and sync)."""
    argv = [cli, "apply", "--yes", "--profile", "debian", "--disk", "/dev/vda", "--disk", "/dev/vdb"]
    return [*argv, "--bootloader", "efi", "--efi-image", efi_image, "--initramfs", "skip", "--esp-size", "64M"]


def power_cut_script(efi_image: str, during: str, cut_file: str, cli: str = CLI) -> str:
    """A guest script that runs apply and resets the machine (sysrq ``b``: no sync) ``during``
    "mkfs" (a wrapper starts the real mkfs.vfat and cuts 0.2 s later) or "resync" (cut 1 s into
    apply's wait for the resync). md's resync is throttled to 500 KB/s in both, so it runs at
    either cut and the array owes the rest of it afterwards. What was cut goes to ``cut_file``."""
    apply = shlex.join(apply_argv(efi_image, cli))
    cut = f'cat /proc/mdstat > {cut_file}\necho "POWER-CUT during {during}" >> {cut_file}\necho b > /proc/sysrq-trigger\nsleep 60\n'
    throttle = (
        "set -u\nmodprobe raid1\n"  # /proc/sys/dev/raid comes with md
        "echo 100 > /proc/sys/dev/raid/speed_limit_min\necho 500 > /proc/sys/dev/raid/speed_limit_max\n"
    )
    if during == "mkfs":
        wrapper = f'#!/bin/sh\n/usr/sbin/mkfs.vfat "$@" &\nsleep 0.2\n{cut}'
        return (
            f"{throttle}cat > /usr/local/sbin/mkfs.vfat <<'ESPVM_EOF'\n{wrapper}ESPVM_EOF\n"
            f"chmod 755 /usr/local/sbin/mkfs.vfat\n{apply} 2>&1\nsleep 60\n"
        )
    out = os.path.join(os.path.dirname(cut_file), "apply.out")  # in the share: seen even after the cut
    return (
        f"{throttle}{apply} > {out} 2>&1 &\n"
        f"timeout 300 sh -c 'until grep -q \"] wait for /dev/md/esp to finish its resync\" {out}; do sleep 0.2; done'\n"
        f"sleep 1\n{cut}"
    )


def adopt_loop(efi_image: str, cli: str, *, stale: bool) -> list[dict[str, object]]:
    """adopt killed at each step (ci/adoptable.py's machine): vda holds the live ESP, vdb a stale
    copy of it (``stale``: adopted where it is) or nothing (it gets partition 1)."""
    blank(["/dev/vda", "/dev/vdb", "/dev/vdc"][: 2 if stale else 3])
    pair = ["/dev/vda", "/dev/vdb"]
    argv = adoptable.argv(cli, pair, efi_image)
    outside: dict[str, str] = {}

    def before(n: int) -> None:
        adoptable.reset(pair)
        outside.update(adoptable.make(*pair, stale=stale))

    before(0)
    steps = list(range(1, steps_of(argv) + 1))
    name = "adopt (stale ESP in place)" if stale else "adopt (blank disk)"
    return loop(name, lambda n: argv, before, lambda n: adoptable.checks(pair, efi_image, outside), steps)


# Disks that hold more than the ESP (issue 25): partition 2 from 80 MiB on, partition 1's room
# (the 64 MiB of apply_argv) at 1 MiB.
P2_START = 80 * 2048
P2_DATA = Path("/run/espvm-p2-data")  # 8 MiB written at the start of each partition 2, made once


def _partition_2(disk: str, type_code: str) -> None:
    sh("sgdisk", f"--new=2:{P2_START}:0", f"--typecode=2:{type_code}", "--change-name=2:data", disk)
    sh("partx", "--update", disk, ok=(0, 1))


def _p2_state(disks: Sequence[str]) -> dict[str, str]:
    """Each partition 2's sha256 and GPT entry (type, GUID, name, first and last sector)."""
    out = {}
    for disk in disks:
        entry = sh("sgdisk", "--info=2", disk).stdout
        digest = sh("sha256sum", f"{disk}2").stdout.split()[0]
        out[disk] = digest + "\n" + "\n".join(x for x in entry.splitlines() if not x.startswith("Partition size"))
    return out


def shared_loop(efi_image: str, cli: str) -> list[dict[str, object]]:
    """apply killed at each step on disks an installer partitioned: /dev/vda holds an empty EF00
    partition 1 (its size the one asked) and a partition 2, /dev/vdb only a partition 2 (type
    BF00, a ZFS pool's stand-in, with data). apply takes A's partition 1 and adds B's; the check
    adds every byte and GPT entry of both partitions 2 unchanged."""
    pair = ["/dev/vda", "/dev/vdb"]
    if not P2_DATA.exists():
        P2_DATA.write_bytes(os.urandom(8 << 20))
    argv = apply_argv(efi_image, cli)
    kept: dict[str, str] = {}

    def before(n: int) -> None:
        blank(pair)
        sh("sgdisk", "--new=1:2048:+64M", "--typecode=1:EF00", "--change-name=1:EFI system partition", pair[0])
        for disk in pair:
            _partition_2(disk, "BF00")
            sh("dd", f"if={P2_DATA}", f"of={disk}2", "bs=1M", "conv=fsync", "status=none")
        kept.update(_p2_state(pair))

    def check(n: int) -> list[str]:
        wrong = checks(pair, efi_image)
        return wrong + [f"partition 2 of {d} changed" for d, s in _p2_state(pair).items() if kept[d] != s]

    before(0)
    steps = list(range(1, steps_of(argv) + 1))
    return loop("apply (partitions there)", lambda n: argv, before, check, steps)


def copy_table_loop(efi_image: str, cli: str) -> list[dict[str, object]]:
    """``replace --old missing --new DISK --copy-table --add-others`` killed at each step, on disks
    whose partitions 2 hold an md RAID1 data array (an md root's stand-in) beside the mirrored
    ESP: before each run a member disk dies (it leaves both arrays, its table and signatures are
    erased, and it is the next run's new disk: B, then C, then B ...). The check adds the data
    array whole on A's and the new disk's partitions 2, its data as written, A's partition 2 entry
    unchanged, and no boot entry left for the dead disk."""
    a, b, c = "/dev/vda", "/dev/vdb", "/dev/vdc"
    blank([a, b, c])
    if not P2_DATA.exists():
        P2_DATA.write_bytes(os.urandom(8 << 20))
    for disk in (a, b):
        _partition_2(disk, "FD00")
    sh("mdadm", "--create", "/dev/md/data", "--run", "--level=1", "--raid-devices=2", "--metadata=1.2",
       "--homehost=any", "--name=data", "--assume-clean", f"{a}2", f"{b}2")  # fmt: skip
    sh("dd", f"if={P2_DATA}", "of=/dev/md/data", "bs=1M", "conv=fsync", "status=none")
    sh(*apply_argv(efi_image, cli))  # partition 1 at 1 MiB on both: the tables are alike
    entry_a = sh("sgdisk", "--info=2", a).stdout

    def swap(n: int) -> tuple[str, str]:  # the disk that dies, the blank one that takes its place
        return (b, c) if n % 2 else (c, b)

    def before(n: int) -> None:
        dead, _new = swap(n)
        for array, part in (("/dev/md/esp", f"{dead}1"), ("/dev/md/data", f"{dead}2")):
            if sh("mdadm", "--detail", array).stdout.count(part):
                sh("mdadm", array, "--fail", part, "--remove", part)
        for part in (f"{dead}1", f"{dead}2"):
            if os.path.exists(part):
                sh("wipefs", "--all", "--quiet", part)
        sh("sgdisk", "--zap-all", dead, ok=(0, 2))
        sh("partx", "--delete", dead, ok=(0, 1))

    def argv(n: int) -> list[str]:
        return [cli, "replace", "--yes", "--old", "missing", "--new", swap(n)[1], "--copy-table", "--add-others"]

    def check(n: int) -> list[str]:
        dead, new = swap(n)
        wrong = checks([a, new], efi_image)
        sh("mdadm", "--wait", "/dev/md/data", ok=(0, 1))
        detail = dict(x.split("=", 1) for x in sh("mdadm", "--detail", "--export", "/dev/md/data").stdout.split())
        members = sorted(v for k, v in detail.items() if k.endswith("_DEV"))
        if members != [f"{a}2", f"{new}2"] or detail.get("MD_DEGRADED", "0") != "0":
            wrong.append(f"data array: members {members}, degraded {detail.get('MD_DEGRADED')}")
        with open("/dev/md/data", "rb") as data:
            if data.read(8 << 20) != P2_DATA.read_bytes():
                wrong.append("the data array's data changed")
        if sh("sgdisk", "--info=2", a).stdout != entry_a:
            wrong.append(f"partition 2 of {a} changed")
        serial = Path(f"/sys/block/{os.path.basename(dead)}/serial").read_text().strip()
        if f"(esp-mirror {serial})" in sh("efibootmgr").stdout:
            wrong.append(f"a boot entry for the dead disk {dead}")
        return wrong

    before(1)
    steps = list(range(1, steps_of(argv(1)) + 1))
    prepared = {1}

    def before_once(n: int) -> None:
        if n not in prepared:
            before(n)

    return loop("replace (table copy)", argv, before_once, check, steps)


def released_checks(pair: Sequence[str], efi_image: str) -> list[str]:
    """What is wrong after ``release --all``: no array, each partition a plain FAT that fsck.fat
    passes and that starts its own entry (none of esp-mirror's left), the first disk's mounted at
    the ESP and named by fstab's one line, mdadm.conf without the ESP's array, no record, no journal."""
    wrong = []
    if re.search(r"\b(vd[ab]1)\[", Path("/proc/mdstat").read_text()):
        wrong.append("an array still holds an ESP partition")
    entries = sh("efibootmgr").stdout
    for disk in pair:
        part = f"{disk}1"
        if "Array UUID" in sh("mdadm", "--examine", part, ok=(0, 1)).stdout:  # a FAT: only "MBR Magic"
            wrong.append(f"{part} still carries an md superblock")
        probe = dict(x.split("=", 1) for x in sh("blkid", "-p", "-o", "export", part, ok=(0, 2)).stdout.split())
        if probe.get("TYPE") != "vfat":
            wrong.append(f"{part} is {probe.get('TYPE') or 'nothing'}, not a FAT")
        fsck = sh("fsck.fat", "-n", part, ok=(0, 1))
        if fsck.returncode and fsck_problems(fsck.stdout + fsck.stderr):
            wrong.append(f"fsck.fat -n {part}: {fsck_problems(fsck.stdout + fsck.stderr)[0]}")
        serial = Path(f"/sys/block/{os.path.basename(disk)}/serial").read_text().strip()
        if entries.count(f"Debian ({serial})") != 1:
            wrong.append(f"{entries.count(f'Debian ({serial})')} entries of its own for {disk}")
    if "(esp-mirror " in entries:
        wrong.append("an entry of esp-mirror's is left")
    first = dict(x.split("=", 1) for x in sh("blkid", "-p", "-o", "export", f"{pair[0]}1").stdout.split())
    fstab = [x for x in Path("/etc/fstab").read_text().splitlines() if ESP in x.split() and not x.startswith("#")]
    if len(fstab) != 1 or fstab[0].split()[0] != f"UUID={first.get('UUID')}":
        wrong.append(f"fstab's ESP lines: {fstab}")
    if sh("findmnt", "-n", "-o", "SOURCE", ESP, ok=(0, 1)).stdout.strip() != f"{pair[0]}1":
        wrong.append(f"{ESP} is not mounted from {pair[0]}1")
    if [x for x in Path("/etc/mdadm/mdadm.conf").read_text().splitlines() if x.startswith("ARRAY /dev/md/esp")]:
        wrong.append("mdadm.conf still lists the ESP's array")
    left = ("/" + record.PATH, "/" + RELEASE_JOURNAL)
    wrong += [f"{path} is left" for path in left if os.path.exists(path)]
    return wrong


def release_loop(efi_image: str, cli: str) -> list[dict[str, object]]:
    """``release --all`` killed at each step, from the mirror apply makes on two blank disks (made
    again before each run); the check is :func:`released_checks`."""
    pair = ["/dev/vda", "/dev/vdb"]
    argv = [cli, "release", "--all", "--yes"]

    def before(n: int) -> None:
        blank([*pair, "/dev/vdc"])
        sh(*apply_argv(efi_image, cli))

    before(0)
    steps = list(range(1, steps_of(argv) + 1))
    return loop("release --all", lambda n: argv, before, lambda n: released_checks(pair, efi_image), steps)


# Bad input for adopt on ci/adoptable.py's machine: (name, shell lines that make it, the adopt
# arguments beyond the machine's, shell lines that undo it). Each must exit 2 with one line.
ADOPT_REFUSALS = (
    ("not-fat", "umount /target/boot/efi", ["--esp", "/dev/vda2"], "mount /dev/vda1 /target/boot/efi"),
    (
        "damaged",  # the second FAT differs from the first: fsck.fat -n reports it
        "umount /target/boot/efi; dd if=/dev/urandom of=/dev/vda1 bs=512 seek=2000 count=8 conv=notrunc status=none",
        [],
        "",  # put back by the restore of the whole disk below
    ),
    (
        "too-small",
        "sgdisk --new=1:2048:+20M --typecode=1:EF00 /dev/vdd >/dev/null; partx --add /dev/vdd 2>/dev/null || true",
        ["--disk", "/dev/vdd"],
        "sgdisk --zap-all /dev/vdd >/dev/null; partx --delete /dev/vdd 2>/dev/null || true",
    ),
    (
        "sector-sizes",
        "truncate -s 128M /tmp/4k.img; loop=$(losetup --find --show --sector-size 4096 /tmp/4k.img)",
        ["--disk", "$loop"],
        'losetup --detach "$loop"',
    ),
    ("mounted-twice", "mkdir -p /mnt/twice; mount /dev/vda1 /mnt/twice", [], "umount /mnt/twice"),
    (
        "held-by-an-array",  # a superblock-less md over the live ESP: it writes nothing
        "umount /target/boot/efi; mdadm --build /dev/md/held --level=1 --raid-devices=2 --run /dev/vda1 missing",
        [],
        "mdadm --stop /dev/md/held; mount /dev/vda1 /target/boot/efi",
    ),
    ("not-root", "", [], ""),
)


def adopt_refusals(cli: str, efi_image: str) -> str:
    """Shell lines that try each of :data:`ADOPT_REFUSALS` and print, per case, the exit code, the
    error's line count and line, and whether the disks and the target are as they were."""
    base = adoptable.argv(cli, ["/dev/vda", "/dev/vdb"], efi_image)
    state = "{ sha256sum /dev/vda /dev/vdb; find /target -type f -exec sha256sum {} + | sort; efibootmgr; }"
    out = ["dd if=/dev/vda of=/run/espvm-vda.img bs=4M status=none  # the live ESP's disk, for the damaged case"]
    for name, make, extra, undo in ADOPT_REFUSALS:
        argv = " ".join([shlex.quote(a) for a in base] + [a if a.startswith("$") else shlex.quote(a) for a in extra])
        if name == "not-root":
            argv = f"setpriv --reuid=65534 --regid=65534 --clear-groups {argv}"
        out += [
            f"echo '@@@ refusal {name}'",
            make or ":",
            f"before=$({state} 2>&1)",
            f"rc=0; {argv} >/tmp/refusal.out 2>/tmp/refusal.err || rc=$?",
            f"after=$({state} 2>&1)",
            'echo "exit $rc lines $(wc -l < /tmp/refusal.err)"; cat /tmp/refusal.err /tmp/refusal.out',
            '[ "$before" = "$after" ] && echo unchanged || echo CHANGED',
            undo or ":",
        ]
        if name == "damaged":
            out.append(
                "dd if=/run/espvm-vda.img of=/dev/vda bs=4M conv=fsync status=none; mount /dev/vda1 /target/boot/efi"
            )
    return "\n".join(out)


def adopt_power_cut_script(efi_image: str, boot: int, cut_file: str, cli: str = CLI) -> str:
    """A guest script for boot 1, 2 or 3 of the adoption cut twice (ci/adoptable.py's machine, its
    target on /dev/vdc, which survives the resets). Each boot first does what the installed system
    does when it starts: the arrays mdadm.conf lists are assembled, fstab's ESP checked (pass 2) and mounted.

    1. makes the machine, tries the bad input of :data:`ADOPT_REFUSALS` (each refused, nothing
       changed), adopts, and cuts the power (sysrq ``b``: no sync) right after the copy on the
       degraded array is verified and unmounted;
    2. adopts again and cuts 1 s into the final recovery onto the live ESP's partition (md's
       resync throttled to 500 KB/s, so it runs then);
    3. adopts again, to the end, and prints what ci.adoptable.checks finds wrong, as JSON.
    """
    adopt = shlex.join(adoptable.argv(cli, ["/dev/vda", "/dev/vdb"], efi_image))
    python = shlex.quote(sys.executable)
    cut = f'cat /proc/mdstat > {cut_file}\necho "POWER-CUT at boot {boot}" >> {cut_file}\necho b > /proc/sysrq-trigger\nsleep 60\n'
    lines = ["set -eu", f"cd {shlex.quote(str(Path(__file__).resolve().parents[1]))}", "mkdir -p /target"]
    if boot == 1:
        lines += [
            "mkfs.ext4 -q -F /dev/vdc && mount /dev/vdc /target",
            f"{python} -c 'import json; from ci import adoptable; "
            'json.dump(adoptable.make("/dev/vda", "/dev/vdb", stale=True), open("/target/outside.json", "w"))\'',
        ]
    else:
        lines += [
            "mount /dev/vdc /target",
            "mdadm --assemble --scan --config=/target/etc/mdadm/mdadm.conf || true",
            # fstab's pass 2: systemd-fsck repairs what the cut left half written (exit 1: corrected)
            "esp=$(findmnt --fstab --tab-file /target/etc/fstab --evaluate -n -o SOURCE --mountpoint /boot/efi)",
            'fsck -a "$esp" || [ $? -le 1 ]',
            "mount --fstab /target/etc/fstab --target-prefix /target /boot/efi",
        ]
    lines.append("modprobe raid1")
    if boot == 2:  # md's recovery slowed down so that the cut falls into it
        lines += ["echo 100 > /proc/sys/dev/raid/speed_limit_min", "echo 500 > /proc/sys/dev/raid/speed_limit_max"]
    if boot == 1:
        lines.append(adopt_refusals(cli, efi_image))
    if boot == 1:  # after the copy is on the degraded array and unmounted from the staging directory
        wrapper = f'#!/bin/sh\n/usr/bin/umount "$@"\nrc=$?\n[ "$1" = /run/esp-mirror/adopt ] && {{\n{cut}}}\nexit $rc\n'
        lines.append(
            f"cat > /usr/local/sbin/umount <<'ESPVM_EOF'\n{wrapper}ESPVM_EOF\nchmod 755 /usr/local/sbin/umount"
        )
    elif boot == 2:  # 1 s into the recovery onto the live ESP's partition
        wrapper = f'#!/bin/sh\n/usr/sbin/mdadm "$@"\nrc=$?\ncase "$*" in *" --add "*) sleep 1\n{cut};; esac\nexit $rc\n'
        lines.append(f"cat > /usr/local/sbin/mdadm <<'ESPVM_EOF'\n{wrapper}ESPVM_EOF\nchmod 755 /usr/local/sbin/mdadm")
    lines.append(f"{adopt} 2>&1")
    if boot < 3:
        lines.append("sleep 60")
    else:
        lines.append(
            f'{python} -c \'import json; from ci import adoptable; print(json.dumps({{"wrong": adoptable.checks('
            f'["/dev/vda", "/dev/vdb"], {json.dumps(efi_image)}, json.load(open("/target/outside.json")))}}))\''
        )
    return "\n".join(lines) + "\n"


COMMANDS = ("apply", "replace", "repair", "adopt", "shared", "copy-table", "release")


def main(efi_image: str, half: int, cli: str = CLI, only: Sequence[str] = COMMANDS) -> int:
    """Half 1 of the work: apply's odd steps, then replace's, then adopt's onto a blank disk; half
    2: apply's even steps, then repair's, then adopt's of a stale ESP in place (the two halves run
    in two guests at once). ``cli`` is the esp-mirror to run (the test gives the zip application
    apply installs: one file to read over 9p, not hundreds). ``only``: the commands whose loops
    run (the others are skipped, to try one command's loop again)."""
    for path in SAVED:
        Path(f"/run/espvm-saved{path.replace('/', '-')}").write_bytes(Path(path).read_bytes())
    install_wrappers()
    pair = ["/dev/vda", "/dev/vdb"]
    apply = apply_argv(efi_image, cli)
    blank([*pair, "/dev/vdc"] if half == 1 else pair)
    results: list[dict] = []
    if "apply" in only:
        steps = [n for n in range(1, steps_of(apply) + 1) if n % 2 == half % 2]
        results += loop("apply", lambda n: apply, lambda n: blank(pair), lambda n: checks(pair, efi_image), steps)
    if "replace" in only or "repair" in only:
        sh(*apply)  # the mirror every replace and repair starts from
    if half == 1 and "replace" in only:

        def swap(n: int) -> tuple[str, str]:  # replace B by C, then C by B, ...
            return ("/dev/vdb", "/dev/vdc") if n % 2 else ("/dev/vdc", "/dev/vdb")

        def replace(n: int) -> list[str]:
            old, new = swap(n)
            return [cli, "replace", "--yes", "--old", old, "--new", new, "--wipe"]

        steps = list(range(1, steps_of(replace(1)) + 1))
        results += loop(
            "replace", replace, lambda n: None, lambda n: checks(["/dev/vda", swap(n)[1]], efi_image), steps
        )
    elif half == 2 and "repair" in only:
        repair = [cli, "repair", "--yes", "--source", "/dev/vda"]
        steps = list(range(1, steps_of(repair) + 1))
        results += loop("repair", lambda n: repair, lambda n: None, lambda n: checks(pair, efi_image), steps)
    if half == 1 and "copy-table" in only:
        results += copy_table_loop(efi_image, cli)
    if half == 1 and "release" in only:
        results += release_loop(efi_image, cli)
    elif half == 2 and "shared" in only:
        results += shared_loop(efi_image, cli)
    if "adopt" in only:
        results += adopt_loop(efi_image, cli, stale=half == 2)
    print(json.dumps({"half": half, "steps": len(results)}), flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "check":  # check EFI_IMAGE DISK...: what is wrong, as JSON
        print(json.dumps({"wrong": checks(sys.argv[3:], sys.argv[2])}))
        sys.exit(0)
    only = tuple(sys.argv[4].split(",")) if len(sys.argv) > 4 else COMMANDS
    sys.exit(main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:4], only=only))
