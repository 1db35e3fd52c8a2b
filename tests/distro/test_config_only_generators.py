"""mkinitcpio (Arch) and mkinitfs (Alpine) cannot be installed on Debian: their configuration
is shell, so esp-mirror's generated settings are checked by sourcing them the way each tool does.

mkinitcpio v36+ sources /etc/mkinitcpio.conf with bash, then every /etc/mkinitcpio.conf.d/*.conf
in order, so a drop-in overrides the main file (``-c FILE`` reads only FILE). The rules, from
mkinitcpio v41's install/mdadm_udev and CHANGELOG: mdadm_udev after block and before
filesystems, exactly once, and the old ``mdadm`` alias is gone since v38. mkinitfs sources /etc/mkinitfs/mkinitfs.conf
with sh (busybox ash on Alpine): ``features`` must contain ``raid`` exactly once.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ci.installer import prepare_on_images
from esp_mirror_plugin.pipeline.kinds import InitramfsMode

pytestmark = pytest.mark.distro

# Arch's stock HOOKS (mkinitcpio v41 mkinitcpio.conf), the udev and the systemd variant.
STOCK_UDEV = "base udev autodetect microcode modconf kms keyboard keymap consolefont block filesystems fsck"
STOCK_SYSTEMD = "base systemd autodetect microcode modconf kms keyboard sd-vconsole block filesystems fsck"
MKINITCPIO_CONF = """\
# vim:set ft=sh
MODULES=()
BINARIES=()
FILES=()
HOOKS=({hooks})
"""

# mkinitcpio's way of reading its configuration (without -c): the main file, then the drop-ins.
READ_MKINITCPIO = """\
set -e
shopt -s nullglob
. "$1/etc/mkinitcpio.conf"
for conf in "$1"/etc/mkinitcpio.conf.d/*.conf; do . "$conf"; done
printf '%s\\n' "${HOOKS[@]}"
"""
READ_MKINITFS = 'set -e; . "$1/etc/mkinitfs/mkinitfs.conf"; printf "%s\\n" "$features"'


def _apply_initramfs_config(profile: str, target: Path, workdir: Path) -> None:
    """esp-mirror's initramfs_config hook, applied as an installer would (settings only), to a
    target that has mdadm (esp-mirror refuses one without it: the array could not assemble)."""
    mdadm = target / "usr" / "sbin" / "mdadm"
    mdadm.parent.mkdir(parents=True, exist_ok=True)
    mdadm.write_text("#!/bin/sh\n")
    mdadm.chmod(0o755)
    install = prepare_on_images(profile, target, workdir, initramfs=InitramfsMode.CONFIGURE_ONLY, foreign=True)
    install.initramfs_config()


def _arch_target(tmp_path: Path, hooks: str, dropins: dict[str, str] | None = None) -> Path:
    target = tmp_path / "target"
    (target / "etc" / "mkinitcpio.conf.d").mkdir(parents=True)
    (target / "etc" / "mkinitcpio.conf").write_text(MKINITCPIO_CONF.format(hooks=hooks))
    for name, text in (dropins or {}).items():
        (target / "etc" / "mkinitcpio.conf.d" / name).write_text(text)
    return target


def _hooks(target: Path) -> list[str]:
    out = subprocess.run(
        ["bash", "-c", READ_MKINITCPIO, "bash", str(target)],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    return out.stdout.split()


def _assert_mdadm_udev_placed(hooks: list[str]) -> None:
    assert hooks.count("mdadm_udev") == 1, hooks
    assert "mdadm" not in hooks, hooks  # the pre-v38 alias would fail the build now
    assert hooks.index("block") < hooks.index("mdadm_udev") < hooks.index("filesystems"), hooks


@pytest.mark.parametrize("stock", [STOCK_UDEV, STOCK_SYSTEMD], ids=["udev-hooks", "systemd-hooks"])
def test_arch_dropin_puts_mdadm_udev_between_block_and_filesystems(tmp_path: Path, stock: str) -> None:
    target = _arch_target(tmp_path, stock)
    _apply_initramfs_config("arch", target, tmp_path)
    assert (target / "etc/mkinitcpio.conf").read_text() == MKINITCPIO_CONF.format(hooks=stock)  # untouched
    hooks = _hooks(target)
    _assert_mdadm_udev_placed(hooks)
    assert [h for h in hooks if h != "mdadm_udev"] == stock.split()  # every other hook kept, in order


@pytest.mark.parametrize(
    "existing",
    [
        "base udev autodetect modconf block mdadm_udev filesystems fsck",  # already right
        "base udev autodetect modconf block filesystems mdadm_udev fsck",  # after filesystems: too late
        "base udev autodetect modconf block mdadm filesystems fsck",  # the alias removed in v38
        "base udev mdadm_udev autodetect modconf block mdadm_udev filesystems fsck",  # twice
    ],
    ids=["already-there", "misplaced", "old-mdadm-alias", "twice"],
)
def test_arch_dropin_leaves_mdadm_udev_once_whatever_the_main_file_had(tmp_path: Path, existing: str) -> None:
    target = _arch_target(tmp_path, existing)
    _apply_initramfs_config("arch", target, tmp_path)
    _assert_mdadm_udev_placed(_hooks(target))


def test_arch_dropin_comes_after_earlier_dropins_and_keeps_their_hooks(tmp_path: Path) -> None:
    # An earlier drop-in (say, from an encryption setup) replaces HOOKS: ours sorts after it (90-).
    earlier = "HOOKS=(base systemd autodetect keyboard sd-vconsole block sd-encrypt filesystems fsck)\n"
    target = _arch_target(tmp_path, STOCK_UDEV, {"50-encrypt.conf": earlier})
    _apply_initramfs_config("arch", target, tmp_path)
    assert sorted(p.name for p in (target / "etc/mkinitcpio.conf.d").glob("*.conf")) == [
        "50-encrypt.conf",
        "90-esp-mirror.conf",
    ]
    hooks = _hooks(target)
    _assert_mdadm_udev_placed(hooks)
    assert "sd-encrypt" in hooks and hooks.index("sd-encrypt") < hooks.index("mdadm_udev")


def test_arch_without_dropin_support_edits_a_block_in_the_main_file(tmp_path: Path) -> None:
    # mkinitcpio before v36 reads no drop-ins: a user profile says so with dropin_dir: false.
    profile = tmp_path / "arch-old.yaml"
    profile.write_text("extends: arch\ninitramfs:\n  dropin_dir: false\n")
    target = _arch_target(tmp_path, STOCK_UDEV)
    _apply_initramfs_config(str(profile), target, tmp_path)
    assert not list((target / "etc/mkinitcpio.conf.d").glob("*.conf"))
    _assert_mdadm_udev_placed(_hooks(target))
    _apply_initramfs_config(str(profile), target, tmp_path)  # a second apply changes nothing
    _assert_mdadm_udev_placed(_hooks(target))
    assert (target / "etc/mkinitcpio.conf").read_text().count("_esp_mirror_hooks=()") == 1


def _sh() -> list[str]:
    """Alpine's mkinitfs runs under busybox ash: use busybox's sh when it is here, else dash."""
    busybox = shutil.which("busybox")
    return [busybox, "sh"] if busybox else ["sh"]


@pytest.mark.parametrize(
    "stock",
    [
        'features="ata base ide scsi usb virtio ext4"',  # aports' default: no raid
        'features="ata base cdrom ext4 keymap kms mmc nvme raid scsi usb virtio"',  # raid already there
    ],
    ids=["without-raid", "with-raid"],
)
def test_alpine_features_contain_raid_exactly_once(tmp_path: Path, stock: str) -> None:
    target = tmp_path / "target"
    (target / "etc/mkinitfs").mkdir(parents=True)
    (target / "etc/mkinitfs/mkinitfs.conf").write_text(stock + "\n")
    for _ in range(2):  # the second apply must not add it again
        _apply_initramfs_config("alpine", target, tmp_path)
        out = subprocess.run(
            [*_sh(), "-c", READ_MKINITFS, "sh", str(target)], capture_output=True, text=True, check=True
        )
        features = out.stdout.split()
        assert features.count("raid") == 1, features
        assert [f for f in features if f != "raid"] == [f for f in stock.split('"')[1].split() if f != "raid"]
