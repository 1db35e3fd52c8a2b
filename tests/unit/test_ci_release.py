"""ci/release.py, the VM proof of `esp-mirror release` the lead engineer wires into a boot of the
installed system: its shell goes into the test unit's script whole, its parsers read what the
tools print, and its checks pass a report of a release that went right and fail one that did not."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ci import release
from ci.installed import STATE_SCRIPT, InstalledBoot

A, B = "5241326d-4933-54ab-b80c-0b322a369e3c", "dde38973-08ee-5902-be9d-1c70339cfe83"


def hd(guid: str, loader: str = "\\EFI\\debian\\shimx64.efi") -> str:
    return f"HD(1,GPT,{guid},0x800,0x100000)/File({loader})"


NVRAM = f"""BootCurrent: 0001
Timeout: 0 seconds
BootOrder: 0001,0004,0000
Boot0000* UiApp\tFvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(462caa21-7614-4503-836e-8ab6f4662331)
Boot0001* Debian (esp-mirror espvm-A)\t{hd(A)}
Boot0004* Debian (espvm-B)\t{hd(B)}
"""
MDSTAT = """Personalities : [raid1]
md126 : active raid1 vdb2[1] vda2[0]
      1497088 blocks super 1.2 [2/2] [UU]

md127 : active raid1 vda1[0]
      524224 blocks super 1.0 [1/1] [U]

unused devices: <none>
"""
FSTAB = (
    "UUID=5e1ec7ed-0e5b-4d1e-9a11-e5b0075e5b00\t/\text4\terrors=remount-ro\t0\t1\n"
    "# BEGIN esp-mirror (managed block: esp-mirror rewrites what is between these lines)\n"
    "UUID=C982-96CB\t/boot/efi\tvfat\tumask=0077,nofail,x-systemd.device-timeout=45s\t0\t2\n"
    "# END esp-mirror\n"
)
RELEASED_DISK = {
    "release-two-refused": "exit 2\nseconds 1.4\nesp-mirror: error: releasing /dev/vdb leaves ... --one-member ...\n",
    "release-disk": "exit 0\nseconds 4.2\n  [release] fatlabel -i /dev/vdb1 E87B8F8C\n",
    "release-mdstat": MDSTAT,
    "release-blkid-b": f"DEVNAME=/dev/vdb1\nUUID=E87B-8F8C\nVERSION=FAT32\nTYPE=vfat\nPART_ENTRY_UUID={B.upper()}\n",
    "release-blkid-array": "DEVNAME=/dev/md/esp\nLABEL=EFI_SYSPART\nUUID=C982-96CB\nVERSION=FAT32\nTYPE=vfat\n",
    "release-examine-b": "exit 1\nmdadm: No md superblock detected on /dev/vdb1.\n",
    "release-fsck-b": "exit 0\nfsck.fat 4.2 (2021-01-31)\n/dev/vdb1: 9 files, 12/130812 clusters\n",
    "release-efibootmgr": NVRAM,
    "release-fstab": FSTAB,
    "release-esp-mount": "/dev/md127 vfat rw,relatime,fmask=0077,dmask=0077\n",
    "release-status": "exit 0\nhealthy\n",
    "release-heal": "exit 0\nnothing to heal: /dev/md/esp has 1 of 1 members\n",
    "release-entries": 'exit 0\n{\n  "plan": [],\n  "would_change": 0,\n  "undecided": 0\n}\n',
    "release-journal": "exit 2\nls: cannot access '/var/lib/esp-mirror/release.json': No such file or directory\n",
}


def boot(sections: dict[str, str]) -> InstalledBoot:
    return InstalledBoot(sections, 0.0, Path("serial.log"))


def test_the_release_shell_goes_into_the_state_script_before_its_report_and_its_end():
    script = release.with_release(STATE_SCRIPT)

    assert script.index("release_run() {") < script.index("\nreport\n")
    assert script.index("if action release-disk; then") < script.index('echo "ESPVM-STATE-END"')
    assert script.replace(release.FUNCTIONS.strip() + "\n", "").replace(release.ACTIONS.strip() + "\n", "") == (
        STATE_SCRIPT
    )
    with pytest.raises(ValueError, match="not the installed system's state script"):
        release.with_release("#!/bin/sh\necho hello\n")


@pytest.mark.real_processes  # sh -n: the shell's own parser
def test_the_state_script_with_the_release_blocks_is_valid_shell(tmp_path):
    path = tmp_path / "espvm-state"
    path.write_text(release.with_release(STATE_SCRIPT))
    done = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stderr) == (0, "")


def test_the_actions_are_the_oem_strings_the_test_unit_reads():
    for action in (release.RELEASE_DISK_ACTION, release.RELEASE_ALL_ACTION):
        assert f"if action {action.removeprefix('espvm-action=')}; then" in release.ACTIONS


def test_the_parsers_read_what_the_tools_print():
    assert release.export(RELEASED_DISK["release-blkid-b"])["TYPE"] == "vfat"
    assert release.exit_code("exit 2\nesp-mirror: error: ...\n") == 2 and release.exit_code("no") is None
    assert release.Mdstat.parse(MDSTAT).with_partition(1) == [
        "md127 : active raid1 vda1[0] 524224 blocks super 1.0 [1/1] [U]"
    ]
    assert release.booted_label(NVRAM) == "Debian (esp-mirror espvm-A)"
    assert [f[1] for f in release.fstab_lines(FSTAB)] == ["/", "/boot/efi"]
    assert [e.label for e in release.entries(NVRAM)][1:] == ["Debian (esp-mirror espvm-A)", "Debian (espvm-B)"]


def test_check_release_disk_passes_a_release_that_went_right():
    release.check_release_disk(boot(RELEASED_DISK))


@pytest.mark.parametrize(
    ("section", "text"),
    [
        ("release-blkid-b", "DEVNAME=/dev/vdb1\nUUID=a2824bdc-e2f9-5aef-83df-651fbf2ea709\nTYPE=linux_raid_member\n"),
        ("release-blkid-b", f"DEVNAME=/dev/vdb1\nUUID=C982-96CB\nTYPE=vfat\nPART_ENTRY_UUID={B}\n"),  # the array's id
        ("release-efibootmgr", NVRAM.replace("Debian (espvm-B)", "Debian (esp-mirror espvm-B)")),
        ("release-heal", "exit 0\nhealed by hand: /dev/vdb1 (/dev/vdb) back in /dev/md/esp\n"),
        ("release-two-refused", "exit 0\n"),
    ],
    ids=["still-a-member", "same-fat-id", "entry-still-ours", "healed-back", "two-to-one-not-refused"],
)
def test_check_release_disk_fails_a_release_that_did_not(section, text):
    with pytest.raises(AssertionError):
        release.check_release_disk(boot({**RELEASED_DISK, section: text}))


ALL_NVRAM = f"""BootCurrent: 0001
BootOrder: 0005,0006,0000
Boot0000* UiApp\tFvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(462caa21-7614-4503-836e-8ab6f4662331)
Boot0005* Debian (espvm-A)\t{hd(A)}
Boot0006* Debian (espvm-B)\t{hd(B)}
"""
RELEASED_ALL = {
    "release-all-dry": "exit 0\n# == release ==\n",
    "release-all": "exit 0\nseconds 6.0\nesp-mirror: the mirror is undone: ...\n",
    "release-all-mdstat": MDSTAT.replace(
        "md127 : active raid1 vda1[0]\n      524224 blocks super 1.0 [1/1] [U]\n\n", ""
    ),
    "release-all-blkid-a": f"DEVNAME=/dev/vda1\nUUID=C982-96CB\nTYPE=vfat\nPART_ENTRY_UUID={A}\n",
    "release-all-blkid-b": f"DEVNAME=/dev/vdb1\nUUID=E87B-8F8C\nTYPE=vfat\nPART_ENTRY_UUID={B}\n",
    "release-all-efibootmgr": ALL_NVRAM,
    "release-all-fstab": FSTAB.split("# BEGIN")[0] + "UUID=C982-96CB\t/boot/efi\tvfat\tumask=0077,nofail\t0\t2\n",
    "release-all-mdadm-conf": "HOMEHOST <system>\nMAILADDR root\nARRAY /dev/md/root UUID=x name=any:root\n",
    "release-all-esp-mount": "/dev/vda1 vfat rw,relatime,fmask=0077,dmask=0077\n",
    "release-all-status": "exit 2\nesp-mirror: not set up here ...\n",
    "release-all-files": "left: /usr/local/sbin/esp-mirror\nleft: /usr/local/share/man/man8/esp-mirror.8\ndone\n",
    "release-all-failed": "",
    "release-all-upgrade": "exit 0\nInstalling for x86_64-efi platform.\nInstallation finished. No error reported.\n",
    "release-all-efibootmgr-after": ALL_NVRAM.replace("BootCurrent: 0001", "BootCurrent: 0002"),
}


def test_check_release_all_passes_a_mirror_undone_and_fails_one_with_a_unit_left():
    release.check_release_all(boot(RELEASED_ALL))
    left = "left: /etc/systemd/system/esp-mirror-heal.service\n" + RELEASED_ALL["release-all-files"]
    with pytest.raises(AssertionError):
        release.check_release_all(boot({**RELEASED_ALL, "release-all-files": left}))
