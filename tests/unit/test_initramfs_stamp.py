"""The initramfs is rebuilt only when what esp-mirror gives the generator changed since the last
rebuild it completed: mdadm.conf and the generator's files as this apply leaves them, and the
regeneration commands. A stamp in the target (var/lib/esp-mirror/initramfs.sha256) holds their
sha256; a plan that finds it equal plans no rebuild (and no bind mounts for it), only a note.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import KVER, Machine, json_commands, plan_of, starting

from esp_mirror_plugin.hooks.initramfs import STAMP

BEGIN = "# BEGIN esp-mirror (managed block: esp-mirror rewrites what is between these lines)"
END = "# END esp-mirror"
NOTE = (
    "the initramfs was regenerated with these settings already ({target}/var/lib/esp-mirror/initramfs.sha256): "
    "nothing to rebuild; delete that file to force it"
)
# The regeneration each profile runs, for the one kernel of the fake target.
REGENERATE = {
    "alpine": [("mkinitfs", "-b", "/", KVER)],
    "arch": [("mkinitcpio", "-P")],
    "debian": [("update-initramfs", "-u", "-k", "all")],
    "ubuntu": [("update-initramfs", "-u", "-k", "all")],
    "fedora": [("dracut", "--regenerate-all", "--force")],
    "rhel": [("dracut", "--regenerate-all", "--force")],
    "opensuse": [("dracut", "--regenerate-all", "--force")],
    "gentoo": [("dracut", "--regenerate-all", "--force")],
    "void": [("xbps-reconfigure", "--force", "--all")],
}


def apply(machine: Machine, *argv: str) -> dict:
    outcome = machine.cli("apply", "--yes", "--json", *machine.args(), *argv)
    assert outcome.code == 0, outcome.err
    return json.loads(outcome.out)


def group(plan: dict, name: str) -> dict:
    return next((g for g in plan["groups"] if g["name"] == name), {"name": name, "steps": [], "notes": []})


def rebuilds(plan: dict, machine: Machine) -> list[tuple[str, ...]]:
    """The regeneration commands of initramfs_config, without their chroot prefix."""
    return [argv[2:] for argv in starting(json_commands(plan, "initramfs_config"), "chroot", str(machine.target))]


def stamp_steps(plan: dict) -> list[dict]:
    return [s for s in group(plan, "initramfs_config")["steps"] if s.get("path", "").endswith("/" + STAMP)]


def digest(files: list[tuple[str, str]], argvs: list[tuple[str, ...]]) -> str:
    data = {"files": [list(f) for f in files], "argv": [list(a) for a in argvs]}
    return hashlib.sha256(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def test_a_first_apply_rebuilds_then_writes_the_digest_of_the_planned_mdadm_conf_and_the_command(images):
    """The target has no mdadm.conf yet: the generator reads it as post_format's edit makes it."""
    report = apply(images)
    array = f"ARRAY /dev/md/esp metadata=1.0 UUID={report['array']['uuid']} name=any:esp"
    mdadm_conf = f"{BEGIN}\n{array}\nMAILADDR root\n{END}\n"
    expected = digest([("/etc/mdadm/mdadm.conf", mdadm_conf)], [("update-initramfs", "-u", "-k", "all")])

    steps = [s["step"].splitlines()[0] for s in report["steps"] if s["group"] == "initramfs_config"]
    assert steps[-2:] == [
        f"chroot {images.target} update-initramfs -u -k all",
        f"write {images.target}/{STAMP} (mode 0644):",
    ]
    assert (images.target / "etc/mdadm/mdadm.conf").read_text() == mdadm_conf
    assert (images.target / STAMP).read_text() == f"{expected}\nupdate-initramfs -u -k all\n"


def test_a_plan_after_apply_rebuilds_nothing_and_binds_nothing_for_it(images, profile):
    first = apply(images, "--profile", profile)
    assert rebuilds(first, images) == REGENERATE[profile]
    [stamp] = stamp_steps(first)
    assert stamp["content"].splitlines()[1:] == [" ".join(argv) for argv in REGENERATE[profile]]

    again = plan_of(images, "--profile", profile)

    initramfs = group(again, "initramfs_config")
    assert initramfs["notes"] == [NOTE.format(target=images.target)]
    assert [s for s in initramfs["steps"] if s["kind"] == "command"] == []  # no rebuild, no mount --bind
    assert [s["would_change"] for s in initramfs["steps"]] == [False] * len(initramfs["steps"])  # the settings
    assert "rebuild the initramfs" not in again["text"] and "# note: the initramfs was regenerated" in again["text"]


def test_once_rebuilt_the_default_plans_what_initramfs_skip_plans(images, efi_image):
    """Where no chroot command runs otherwise, the second apply with the defaults makes no bind
    mounts either: its plan is the one of ``--initramfs skip`` (initramfs-tools needs no settings)."""
    for kind in ("efi", "zfsbootmenu"):
        args = ("--bootloader", kind, "--efi-image", str(efi_image))
        apply(images, *args)
        default, skip = plan_of(images, *args), plan_of(images, *args, "--initramfs", "skip")
        steps = [{g["name"]: g["steps"] for g in plan["groups"] if g["steps"]} for plan in (default, skip)]
        assert steps[0] == steps[1]
        assert default["would_change"] == skip["would_change"]


def test_a_changed_mdadm_conf_rebuilds_again(images, profile):
    apply(images, "--profile", profile)
    mdadm_conf = next(images.target.glob("etc/**/mdadm.conf"))
    mdadm_conf.write_text("DEVICE partitions\n" + mdadm_conf.read_text())  # the user's line, outside our block

    again = plan_of(images, "--profile", profile)

    assert rebuilds(again, images) == REGENERATE[profile]
    assert group(again, "initramfs_config")["notes"] == []
    [stamp] = stamp_steps(again)
    assert stamp["would_change"] is True


def test_a_deleted_stamp_rebuilds_again(images, profile):
    apply(images, "--profile", profile)
    (images.target / STAMP).unlink()
    again = plan_of(images, "--profile", profile)
    assert rebuilds(again, images) == REGENERATE[profile]
    assert [s["would_change"] for s in stamp_steps(again)] == [True]


def test_a_stamp_of_other_inputs_rebuilds_again(images, profile):
    apply(images, "--profile", profile)
    (images.target / STAMP).write_text("0" * 64 + "\n")
    assert rebuilds(plan_of(images, "--profile", profile), images) == REGENERATE[profile]


def test_a_new_kernel_rebuilds_again_where_the_command_names_the_kernels(images):
    apply(images, "--profile", "alpine")
    (images.target / "lib/modules/6.6.30-0-lts").mkdir()
    again = plan_of(images, "--profile", "alpine")
    assert rebuilds(again, images) == [("mkinitfs", "-b", "/", k) for k in (KVER, "6.6.30-0-lts")]
    [stamp] = stamp_steps(again)
    assert stamp["content"].splitlines()[1:] == [f"mkinitfs -b / {k}" for k in (KVER, "6.6.30-0-lts")]


def test_a_new_kernel_rebuilds_nothing_where_the_command_covers_every_kernel_anyway(images):
    """update-initramfs -u -k all: the kernel's own package built its image with these settings."""
    apply(images)
    (images.target / "lib/modules/6.1.0-14-amd64").mkdir()
    assert rebuilds(plan_of(images), images) == []


def test_another_dracut_setting_in_the_drop_in_rebuilds_again(images, tmp_path):
    apply(images, "--profile", "fedora")
    user = tmp_path / "site.yaml"
    user.write_text("extends: fedora\ninitramfs:\n  settings:\n    mdadmconf: 'yes'\n    hostonly: 'no'\n")
    assert rebuilds(plan_of(images, "--profile", str(user)), images) == REGENERATE["fedora"]


def test_a_changed_mkinitcpio_conf_holding_our_block_rebuilds_again(images, tmp_path):
    """Without a drop-in directory our block lives in mkinitcpio.conf: all of that file is an input."""
    user = tmp_path / "site.yaml"
    user.write_text("extends: arch\ninitramfs:\n  dropin_dir: false\n")
    apply(images, "--profile", str(user))
    assert rebuilds(plan_of(images, "--profile", str(user)), images) == []
    conf = images.target / "etc/mkinitcpio.conf"
    conf.write_text("MODULES=(ext4)\n" + conf.read_text())
    assert rebuilds(plan_of(images, "--profile", str(user)), images) == REGENERATE["arch"]


@pytest.mark.parametrize("mode", ["configure-only", "skip"])
def test_without_a_rebuild_no_stamp_is_read_or_written(images, mode):
    (images.target / STAMP).mkdir(parents=True)  # reading it would refuse: it is a directory
    plan = plan_of(images, "--profile", "fedora", "--initramfs", mode)
    assert rebuilds(plan, images) == [] and stamp_steps(plan) == []
    assert group(plan, "initramfs_config")["notes"] == []
    assert Path(images.target / STAMP).is_dir()
