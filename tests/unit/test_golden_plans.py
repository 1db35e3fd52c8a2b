"""Golden plans: the exact commands and file contents for every profile and every bootloader kind.

The machine is the ``two_disks`` fixture: two blank 20 GiB disks with serials WD-WCC4N0AAAAAA and
WD-WCC4N0BBBBBB, EFI variables holding an OVMF + Debian NVRAM (data/efibootmgr/v17-ovmf-debian.txt,
numbers 0000-0004 in use) and a target root with one kernel. The full text of ``esp-mirror plan``
is compared with fixed files in data/golden/ (written by hand-checked review, never regenerated
by the tests: change them deliberately when the plan is meant to change).
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import pytest
from conftest import (
    BOOTLOADERS,
    DATA,
    PROFILES,
    Machine,
    bootorder_after,
    equip_two_disks,
    json_commands,
    make_efi_image,
    plan_of,
    starting,
)

from esp_mirror_plugin.hooks.initramfs import STAMP
from esp_mirror_plugin.pipeline.bootloaders import BootloaderKind, spec

GOLDEN = DATA / "golden"
DRACUT = {"fedora", "rhel", "opensuse", "void", "gentoo"}

# The spec, per profile: mount point, \EFI\<id>\, entry label, mdadm.conf, the one regeneration.
FACTS = {
    "debian": ("/boot/efi", "debian", "Debian", "/etc/mdadm/mdadm.conf", ("update-initramfs", "-u", "-k", "all")),
    "ubuntu": ("/boot/efi", "ubuntu", "Ubuntu", "/etc/mdadm/mdadm.conf", ("update-initramfs", "-u", "-k", "all")),
    "fedora": ("/boot/efi", "fedora", "Fedora", "/etc/mdadm.conf", ("dracut", "--regenerate-all", "--force")),
    "rhel": (
        "/boot/efi",
        "redhat",
        "Red Hat Enterprise Linux",
        "/etc/mdadm.conf",
        ("dracut", "--regenerate-all", "--force"),
    ),
    "opensuse": ("/boot/efi", "opensuse", "openSUSE", "/etc/mdadm.conf", ("dracut", "--regenerate-all", "--force")),
    "gentoo": ("/boot/efi", "gentoo", "Gentoo", "/etc/mdadm.conf", ("dracut", "--regenerate-all", "--force")),
    "void": ("/boot/efi", "void", "Void Linux", "/etc/mdadm.conf", ("xbps-reconfigure", "--force", "--all")),
    "arch": ("/efi", "arch", "Arch Linux", "/etc/mdadm.conf", ("mkinitcpio", "-P")),
    "alpine": ("/boot/efi", "alpine", "Alpine Linux", "/etc/mdadm.conf", ("mkinitfs", "-b", "/", "6.1.0-13-amd64")),
}
SERIALS = ("WD-WCC4N0AAAAAA", "WD-WCC4N0BBBBBB")
FSTAB_OPTIONS = "umask=0077,nofail,x-systemd.device-timeout=45s"


def image_args(kind: str, efi_image) -> list[str]:
    return ["--efi-image", str(efi_image)] if spec(BootloaderKind(kind)).needs_image else []


# -- the full text ---------------------------------------------------------------------------

GOLDEN_CASES = [pytest.param(p, "grub") for p in PROFILES]
GOLDEN_CASES += [pytest.param("debian", k) for k in BOOTLOADERS if k != "grub"]


@pytest.mark.parametrize(("profile", "kind"), GOLDEN_CASES)
def test_plan_text_is_exactly_the_golden_file(two_disks, efi_image, profile, kind):
    outcome = two_disks.cli(
        "plan", *two_disks.args(), "--profile", profile, "--bootloader", kind, *image_args(kind, efi_image)
    )
    assert outcome.code == 0, outcome.err
    expected = (GOLDEN / f"plan-{profile}-{kind}.txt").read_text()
    if os.environ.get("ESP_MIRROR_GOLDEN_OUT"):  # write the actual plan next to it, for a review by diff
        Path(os.environ["ESP_MIRROR_GOLDEN_OUT"], f"plan-{profile}-{kind}.txt").write_text(
            two_disks.normalize(outcome.out)
        )
    assert two_disks.normalize(outcome.out) == expected


def test_every_builtin_profile_has_a_golden_grub_plan():
    assert sorted(p.name.split("-")[1] for p in GOLDEN.glob("plan-*-grub.txt")) == sorted(PROFILES)


# -- key commands for every profile x bootloader ----------------------------------------------


@pytest.fixture(params=BOOTLOADERS)
def kind(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    """One plan per (profile, kind), made once for the many tests that read it."""
    cache: dict[tuple[str, str], dict] = {}

    def get(profile: str, kind: str) -> dict:
        if (profile, kind) not in cache:
            machine = equip_two_disks(Machine(tmp_path_factory.mktemp(f"{profile}-{kind}")))
            efi_image = make_efi_image(machine.root)
            cache[profile, kind] = plan_of(
                machine, "--profile", profile, "--bootloader", kind, *image_args(kind, efi_image)
            )
        return copy.deepcopy(cache[profile, kind])

    return get


@pytest.fixture
def plan(plans, profile, kind) -> dict:
    """The plan --json of the two_disks machine for this profile and bootloader kind."""
    return plans(profile, kind)


def target_of(plan: dict) -> str:
    return plan["request"]["target"]


def test_each_disk_gets_a_512mib_ef00_partition_at_1mib_with_its_own_guid(plan):
    guids = [m["partition_guid"] for m in plan["members"]]
    assert len(set(guids)) == 2 and all(re.fullmatch(r"[0-9a-f-]{36}", g) for g in guids)
    assert starting(json_commands(plan, "pre_partition"), "sgdisk") == [
        command
        for guid, disk in zip(guids, ("/dev/sda", "/dev/sdb"), strict=False)
        for command in (
            ("sgdisk", "--zap-all", disk),  # what a killed sgdisk may have left, blkid does not see
            (
                "sgdisk",
                "--new=1:2048:1050623",
                "--typecode=1:EF00",
                f"--partition-guid=1:{guid}",
                "--change-name=1:esp-mirror",
                disk,
            ),
        )
    ]


def test_one_wipefs_clears_the_new_partitions_after_all_of_them_appeared(plan):
    [group] = [g for g in plan["groups"] if g["name"] == "pre_partition"]
    kinds = [s["argv"][0] if s["kind"] == "command" else s["kind"] for s in group["steps"]]
    assert kinds == ["sgdisk", "sgdisk", "wait-for-partition"] * 2 + ["settle", "wipefs"]
    assert group["steps"][-1]["argv"] == ["wipefs", "--all", "/dev/sda1", "/dev/sdb1"]


def test_array_is_raid1_with_metadata_1_0_homehost_any_and_name_esp(plan):
    uuid = plan["array"]["uuid"]
    assert re.fullmatch(r"[0-9a-f]{8}(:[0-9a-f]{8}){3}", uuid)
    assert starting(json_commands(plan, "post_format"), "mdadm", "--create") == [
        (
            "mdadm",
            "--create",
            "/dev/md/esp",
            "--run",
            "--level=1",
            "--raid-devices=2",
            "--metadata=1.0",
            "--homehost=any",
            "--name=esp",
            f"--uuid={uuid}",
            "/dev/sda1",
            "/dev/sdb1",
        )
    ]


def test_fat32_is_made_on_the_array_with_512_byte_sectors_and_4k_clusters(plan):
    volume = plan["filesystem"]["uuid"].replace("-", "")
    assert starting(json_commands(plan, "post_format"), "mkfs.vfat") == [
        ("mkfs.vfat", "-F", "32", "-S", "512", "-s", "8", "-n", "ESP", "-i", volume, "/dev/md/esp")
    ]


def test_array_is_mounted_at_target_plus_the_profiles_mount_point(plan, profile):
    esp_dir = f"{target_of(plan)}{FACTS[profile][0]}"
    assert starting(json_commands(plan, "post_format"), "mount", "-t") == [
        ("mount", "-t", "vfat", "-o", "umask=0077", "/dev/md/esp", esp_dir)
    ]


def test_mdadm_conf_and_fstab_get_exactly_one_managed_line_each(plan, profile):
    """mdadm.conf gets the ARRAY line; where the target has no mdadm.conf yet (every profile but
    Debian's here, whose mdadm package wrote one with MAILADDR), also the monitor's address:
    without one mdmonitor.service fails at every boot."""
    mountpoint, _, _, mdadm_conf, _ = FACTS[profile]
    edits = {s["path"]: s["block"] for g in plan["groups"] for s in g["steps"] if s["kind"] == "edit-block"}
    array = f"ARRAY /dev/md/esp metadata=1.0 UUID={plan['array']['uuid']} name=any:esp"
    expected = array if mdadm_conf == "/etc/mdadm/mdadm.conf" else f"{array}\nMAILADDR root"
    assert edits[f"{target_of(plan)}{mdadm_conf}"] == expected
    assert edits[f"{target_of(plan)}/etc/fstab"] == (
        f"UUID={plan['filesystem']['uuid']}\t{mountpoint}\tvfat\t{FSTAB_OPTIONS}\t0\t2"
    )


def test_initramfs_is_regenerated_exactly_once_inside_the_target(plan, profile):
    assert starting(json_commands(plan, "initramfs_config"), "chroot") == [
        ("chroot", target_of(plan), *FACTS[profile][4])
    ]


def test_bootloader_payload_lands_on_the_array_and_the_fallback_path(plan, profile, kind):
    mountpoint, loader_id, _, _, _ = FACTS[profile]
    target = target_of(plan)
    esp = f"{target}{mountpoint}"
    steps = next(g for g in plan["groups"] if g["name"] == "bootloader")["steps"]
    if kind == "grub" and profile in ("fedora", "rhel"):  # signed GRUB and shim come as packages
        assert starting(json_commands(plan, "bootloader"), "chroot", target) == [
            ("chroot", target, "dnf", "reinstall", "--assumeyes", "shim-x64", "grub2-efi-x64"),
            ("chroot", target, "grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"),  # the configuration, last
        ]
    elif kind == "grub":
        tool = "grub2-install" if profile == "opensuse" else "grub-install"
        grub = ("chroot", target, tool, "--target=x86_64-efi", f"--efi-directory={mountpoint}", "--no-nvram")
        assert starting(json_commands(plan, "bootloader"), "chroot", target, tool) == [
            (*grub, f"--bootloader-id={loader_id}"),
            (*grub, "--removable"),
        ]
    elif kind == "systemd-boot":
        bootctl = next(s for s in steps if "bootctl" in s["argv"])
        assert bootctl["argv"] == ["chroot", target, "bootctl", "install", f"--esp-path={mountpoint}", "--no-variables"]
        assert bootctl["env"] == {"SYSTEMD_RELAX_ESP_CHECKS": "1"}
        assert ("chroot", target, "rm", "-f", f"{mountpoint}/loader/random-seed") in json_commands(plan)
        assert (
            "chroot",
            target,
            "systemctl",
            "mask",
            "systemd-boot-random-seed.service",
            "systemd-boot-system-token.service",
        ) in json_commands(plan)
    else:
        files = (
            [f"EFI/{loader_id}/linux.efi"] if kind == "efi" else ["EFI/ZBM/VMLINUZ.EFI", "EFI/ZBM/VMLINUZ-BACKUP.EFI"]
        ) + ["EFI/BOOT/BOOTX64.EFI"]
        copies = [(s["source"], s["dest"]) for s in steps if s["kind"] == "copy-file"]
        payload = str(Path(target).parent / "payload/linux.efi")
        assert copies == [(payload, f"{esp}/{f}") for f in files]


LOADERS = {
    "grub": "\\EFI\\{id}\\grubx64.efi",
    "systemd-boot": "\\EFI\\systemd\\systemd-bootx64.efi",
    "efi": "\\EFI\\{id}\\linux.efi",
    "zfsbootmenu": "\\EFI\\ZBM\\VMLINUZ.EFI",
}


def test_one_boot_entry_per_disk_created_last_disk_first_so_ours_boot_first(plan, profile, kind):
    """Numbers in disk order (0005 for sda, 0006 for sdb); each create puts its entry first in
    BootOrder, so creating sdb's first leaves ours first in disk order without a --bootorder."""
    _, loader_id, label, _, _ = FACTS[profile]
    loader = LOADERS[kind].format(id=loader_id)
    if kind == "grub" and profile in ("fedora", "rhel"):
        loader = loader.replace("grubx64.efi", "shimx64.efi")
    efibootmgr = starting(json_commands(plan, "bootloader"), "efibootmgr")
    assert efibootmgr == [
        (
            "efibootmgr",
            "--quiet",
            "--create",
            "--bootnum",
            "0006",
            "--disk",
            "/dev/sdb",
            "--part",
            "1",
            "--label",
            f"{label} (esp-mirror {SERIALS[1]})",
            "--loader",
            loader,
        ),
        (
            "efibootmgr",
            "--quiet",
            "--create",
            "--bootnum",
            "0005",
            "--disk",
            "/dev/sda",
            "--part",
            "1",
            "--label",
            f"{label} (esp-mirror {SERIALS[0]})",
            "--loader",
            loader,
        ),
    ]
    assert bootorder_after(("0004", "0001", "0000", "0002", "0003"), efibootmgr) == (
        "0005",
        "0006",
        "0004",
        "0001",
        "0000",
        "0002",
        "0003",
    )


def test_hooks_run_in_target_behind_bind_mounts_that_cleanup_undoes(plan):
    """/proc, /sys and /dev are bound into the target right before the first command that runs
    there (an installer may fill the target only after the first hooks), once, and the
    cleanup group undoes them in reverse order."""
    target = target_of(plan)
    binds = [("mount", "--bind", f"/{fs}", f"{target}/{fs}") for fs in ("proc", "sys", "dev")]
    cmds = json_commands(plan)
    first = next(i for i, argv in enumerate(cmds) if argv[:2] == ("chroot", target))
    assert cmds[first - 3 : first] == binds
    assert [argv for argv in cmds if argv[:2] == ("mount", "--bind")] == binds
    assert json_commands(plan, "cleanup") == [("umount", f"{target}/{fs}") for fs in ("dev", "sys", "proc")]


# -- what differs by generator ----------------------------------------------------------------


def initramfs_files(plan: dict) -> list[dict]:
    """The generator's settings files initramfs_config writes (not the stamp of the rebuild)."""
    steps = [s for g in plan["groups"] if g["name"] == "initramfs_config" for s in g["steps"]]
    return [s for s in steps if s["kind"] != "command" and not s["path"].endswith("/" + STAMP)]


@pytest.mark.parametrize("name", ["debian", "ubuntu"])
def test_initramfs_tools_needs_no_settings_file(two_disks, name):
    assert initramfs_files(plan_of(two_disks, "--profile", name)) == []


@pytest.mark.parametrize("name", sorted(DRACUT))
def test_dracut_dropin_carries_mdadm_conf_and_never_bakes_the_esp_into_the_cmdline(two_disks, name):
    [dropin] = initramfs_files(plan_of(two_disks, "--profile", name))
    assert (dropin["kind"], dropin["path"], dropin["mode"]) == (
        "write-file",
        f"{two_disks.target}/etc/dracut.conf.d/90-esp-mirror.conf",
        "0644",
    )
    lines = dropin["content"].splitlines()
    assert lines[0] == "# Written by esp-mirror."
    assert 'mdadmconf="yes"' in lines and 'hostonly_cmdline="no"' in lines


@pytest.mark.parametrize("name", sorted(DRACUT))
def test_dracut_dropin_adds_mdraid_to_the_modules_instead_of_replacing_them(two_disks, name):
    [dropin] = initramfs_files(plan_of(two_disks, "--profile", name))
    assert dropin["content"] == (
        '# Written by esp-mirror.\nadd_dracutmodules+=" mdraid "\nmdadmconf="yes"\nhostonly_cmdline="no"\n'
    )


def test_arch_gets_a_mkinitcpio_dropin_that_places_mdadm_udev_before_filesystems(two_disks):
    [dropin] = initramfs_files(plan_of(two_disks, "--profile", "arch"))
    assert (dropin["kind"], dropin["path"]) == (
        "write-file",
        f"{two_disks.target}/etc/mkinitcpio.conf.d/90-esp-mirror.conf",
    )
    assert dropin["content"] == (DATA / "golden/mkinitcpio-90-esp-mirror.conf").read_text()


def test_arch_without_dropin_dir_edits_a_block_in_mkinitcpio_conf(two_disks, tmp_path):
    user = tmp_path / "arch-old.yaml"
    user.write_text("extends: arch\ninitramfs:\n  dropin_dir: false\n")
    [edit] = initramfs_files(plan_of(two_disks, "--profile", str(user)))
    assert (edit["kind"], edit["path"]) == ("edit-block", f"{two_disks.target}/etc/mkinitcpio.conf")
    assert edit["block"] == (DATA / "golden/mkinitcpio-90-esp-mirror.conf").read_text()


def test_alpine_adds_the_raid_feature_to_mkinitfs_conf_and_rebuilds_each_kernel(two_disks):
    (two_disks.target / "lib/modules/6.6.30-0-lts").mkdir()
    plan = plan_of(two_disks, "--profile", "alpine")
    [edit] = initramfs_files(plan)
    assert (edit["kind"], edit["path"]) == ("edit-block", f"{two_disks.target}/etc/mkinitfs/mkinitfs.conf")
    assert edit["block"] == 'case " $features " in *" raid "*) ;; *) features="$features raid" ;; esac'
    assert starting(json_commands(plan, "initramfs_config"), "chroot") == [
        ("chroot", str(two_disks.target), "mkinitfs", "-b", "/", kver) for kver in ("6.1.0-13-amd64", "6.6.30-0-lts")
    ]


# -- what differs by disk -----------------------------------------------------------------------


def test_4k_sector_disks_get_partition_bounds_and_mkfs_in_4096_byte_sectors(machine):
    machine.add_disk("sda", sector=4096, serial="A")
    machine.add_disk("sdb", sector=4096, serial="B")
    plan = plan_of(machine, "--no-nvram")
    cmds = json_commands(plan)
    assert [c[1] for c in starting(cmds, "sgdisk") if c[1] != "--zap-all"] == ["--new=1:256:131327"] * 2
    [mkfs] = starting(cmds, "mkfs.vfat")
    assert mkfs[:7] == ("mkfs.vfat", "-F", "32", "-S", "4096", "-s", "1")


@pytest.mark.parametrize(("size", "sectors_per_cluster"), [("512M", "8"), ("200M", "4"), ("100M", "2"), ("40M", "1")])
def test_cluster_size_is_the_largest_up_to_4k_that_still_makes_a_fat32(machine, size, sectors_per_cluster):
    machine.add_disk("sda")
    machine.add_disk("sdb")
    [mkfs] = starting(json_commands(plan_of(machine, "--esp-size", size, "--no-nvram")), "mkfs.vfat")
    assert mkfs[5:7] == ("-s", sectors_per_cluster)


def test_custom_label_array_name_and_size_show_up_in_the_commands(two_disks):
    cmds = json_commands(plan_of(two_disks, "--label", "EFIMIRROR", "--array-name", "boot0", "--esp-size", "1G"))
    assert [c[1] for c in starting(cmds, "sgdisk") if c[1] != "--zap-all"] == ["--new=1:2048:2099199"] * 2
    [create] = starting(cmds, "mdadm", "--create")
    assert create[2] == "/dev/md/boot0" and "--name=boot0" in create
    [mkfs] = starting(cmds, "mkfs.vfat")
    assert mkfs[7:9] == ("-n", "EFIMIRROR") and mkfs[-1] == "/dev/md/boot0"


def test_commands_for_target_root_slash_are_not_chrooted():
    from esp_mirror_plugin.hooks import initramfs
    from esp_mirror_plugin.pipeline import profiles
    from esp_mirror_plugin.pipeline.request import Request
    from esp_mirror_plugin.system.runner import full_argv

    assert full_argv(("grub-install", "--removable"), "/") == ("grub-install", "--removable")
    assert full_argv(("grub-install",), "/mnt/target/") == ("chroot", "/mnt/target/", "grub-install")
    [regen] = initramfs.regenerate_steps(Request(disks=(), target="/"), profiles.load_profile("debian"), ())
    assert regen.describe() == "update-initramfs -u -k all"
