"""Every path that writes to the mirrored ESP finds it whoever runs it, and stops loudly when it
cannot (hooks/anycaller.py): bootctl wrapped (diverted where dpkg is), kernel-install's BOOT_ROOT,
the guard the kernel, initramfs and apt hooks run — per profile.

The machine is the ``two_disks`` fixture; the target gets bootctl (and dpkg-divert where the
profile's package manager is apt) the way the packages install them.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import PROFILES, Machine, plan_of

from esp_mirror_plugin.hooks import anycaller, installed
from esp_mirror_plugin.pipeline.bootloaders import BootloaderKind
from esp_mirror_plugin.pipeline.profiles import load_profile
from esp_mirror_plugin.system.target import Target

APT = {p for p in PROFILES if load_profile(p).packages.install[0] == "apt-get"}


def installed_steps(plan: dict) -> list[dict]:
    return next(g for g in plan["groups"] if g["name"] == installed.GROUP)["steps"]


def ours(machine: Machine, steps: list[dict]) -> list[tuple[str, ...]]:
    """The group's steps of hooks/anycaller.py, as (kind, path in the target) or ("run", argv...)."""
    paths = {
        anycaller.BOOTCTL,
        anycaller.LOCAL_BOOTCTL,
        anycaller.GUARD,
        anycaller.INSTALL_CONF,
        anycaller.APT_HOOK,
        anycaller.KERNEL_INSTALL_PLUGIN,
        anycaller.PACMAN_HOOK,
        *(f"{d}/{anycaller.HOOK_NAME}" for d in anycaller.HOOK_DIRS),
    }
    out: list[tuple[str, ...]] = []
    for s in steps:
        if s["kind"] == "command" and "dpkg-divert" in s["argv"]:
            out.append(("run", *s["argv"][s["argv"].index("dpkg-divert") :]))
        elif "path" in s and "/" + os.path.relpath(s["path"], machine.target) in paths:
            out.append((s["kind"], "/" + os.path.relpath(s["path"], machine.target)))
    return out


def with_bootctl(machine: Machine, dpkg: bool) -> None:
    machine.add_target_programs(*(("dpkg-divert",) if dpkg else ()))
    (machine.target / "usr/bin").mkdir(parents=True, exist_ok=True)
    (machine.target / "usr/bin/bootctl").write_text("#!/bin/sh\n")  # systemd-boot's bootctl
    (machine.target / "usr/bin/bootctl").chmod(0o755)


GUARDED_KERNEL = [("write-file", f"{d}/{anycaller.HOOK_NAME}") for d in anycaller.HOOK_DIRS]


@pytest.mark.parametrize("profile", PROFILES)
def test_with_systemd_boot_every_profile_gets_bootctl_wrapped_boot_root_and_the_guard(two_disks, profile):
    apt = profile in APT
    with_bootctl(two_disks, dpkg=apt)
    steps = ours(two_disks, installed_steps(plan_of(two_disks, "--profile", profile, "--bootloader", "systemd-boot")))
    wrapped = (
        [
            ("run", "dpkg-divert", "--local", "--rename", "--divert", anycaller.DIVERTED, "--add", anycaller.BOOTCTL),
            ("write-file", anycaller.BOOTCTL),
        ]
        if apt
        else [("write-file", anycaller.LOCAL_BOOTCTL)]
    )
    assert steps == [
        *wrapped,
        ("write-file", anycaller.GUARD),
        ("edit-block", anycaller.INSTALL_CONF),
        *(GUARDED_KERNEL if apt else []),  # dracut's, mkinitcpio's and Fedora's go through kernel-install
        ("write-file", anycaller.KERNEL_INSTALL_PLUGIN),
        *([("write-file", anycaller.APT_HOOK)] if apt else []),
        *([("write-file", anycaller.PACMAN_HOOK)] if load_profile(profile).packages.install[0] == "pacman" else []),
    ]


def test_pacman_stops_a_kernel_transaction_before_it_when_the_esp_is_not_mounted(two_disks):
    with_bootctl(two_disks, dpkg=False)
    [hook] = [
        s
        for s in installed_steps(plan_of(two_disks, "--profile", "arch", "--bootloader", "systemd-boot"))
        if s.get("path", "").endswith(anycaller.PACMAN_HOOK)
    ]
    text = hook["content"]
    assert "When = PreTransaction\n" in text and "\nAbortOnFail\n" in text
    assert f"Exec = {anycaller.GUARD}\n" in text
    assert [line for line in text.splitlines() if line.startswith("Target = ")] == [
        "Target = linux*",
        "Target = mkinitcpio",
        "Target = systemd",
    ]
    # with GRUB nothing of pacman's writes to the ESP: no hook
    assert not [
        s for s in installed_steps(plan_of(two_disks, "--profile", "arch")) if s.get("path", "").endswith(".hook")
    ]


def test_the_wrapper_gives_bootctl_the_relaxed_checks_the_esp_and_no_variables(two_disks):
    with_bootctl(two_disks, dpkg=True)
    [wrapper] = [
        s
        for s in installed_steps(plan_of(two_disks, "--bootloader", "systemd-boot"))
        if s.get("path", "").endswith("/usr/bin/bootctl")
    ]
    assert wrapper["mode"] == "0755"
    assert wrapper["content"].splitlines()[-4:] == [
        'SYSTEMD_RELAX_ESP_CHECKS=1 /usr/bin/bootctl.esp-mirror --esp-path=/boot/efi --no-variables "$@"',
        "rc=$?",
        "rm -f /boot/efi/loader/random-seed",  # one boot would rewrite it on one member only
        "exit $rc",
    ]


def test_a_bootctl_diverted_already_is_not_diverted_again(two_disks):
    with_bootctl(two_disks, dpkg=True)
    (two_disks.target / "var/lib/dpkg").mkdir(parents=True)
    (two_disks.target / "var/lib/dpkg/diversions").write_text(
        "/usr/sbin/other\n/usr/sbin/other.distrib\nsomepkg\n/usr/bin/bootctl\n/usr/bin/bootctl.esp-mirror\n:\n"
    )
    steps = ours(two_disks, installed_steps(plan_of(two_disks, "--bootloader", "systemd-boot")))
    assert steps[0] == ("write-file", anycaller.BOOTCTL)
    assert not any(s[0] == "run" for s in steps)


def test_grub_on_apt_guards_grubs_and_shims_packages_only(two_disks):
    guard = next(s for s in installed_steps(plan_of(two_disks)) if s.get("path", "").endswith(anycaller.GUARD))
    assert 'case "${deb##*/}" in grub-efi*|shim-*) touches=${deb##*/} ;; esac' in guard["content"]
    assert '[ "$found" = "C982-96CB" ] && exit 0' in guard["content"]  # the FAT on the array, by its UUID


@pytest.mark.parametrize("bootloader", ["efi", "zfsbootmenu"])
def test_an_image_given_by_path_gets_no_guard(two_disks, efi_image, bootloader):
    plan = plan_of(two_disks, "--bootloader", bootloader, "--efi-image", str(efi_image))
    assert ours(two_disks, installed_steps(plan)) == []  # nothing a package writes to the ESP


def test_kernel_install_keeps_the_settings_of_its_default_file(tmp_path):
    target = Target(str(tmp_path))
    (tmp_path / "usr/lib/kernel").mkdir(parents=True)
    (tmp_path / "usr/lib/kernel/install.conf").write_text("# Fedora's\nlayout=bls\n#initrd_generator=dracut\n")
    [edit] = [s for s in anycaller.plan(target, "/boot/efi", BootloaderKind.SYSTEMD_BOOT, "C982-96CB", "/dev/md/esp",
                                          manager="dnf") if s.path.endswith("install.conf")]  # type: ignore[union-attr]  # fmt: skip
    assert edit.block == "layout=bls\nBOOT_ROOT=/boot/efi"  # /etc's file replaces /usr/lib's: carried over
    (tmp_path / "etc/kernel").mkdir(parents=True)
    (tmp_path / "etc/kernel/install.conf").write_text("layout=other\n")
    [edit] = [s for s in anycaller.plan(target, "/boot/efi", BootloaderKind.SYSTEMD_BOOT, "C982-96CB", "/dev/md/esp",
                                          manager="dnf") if s.path.endswith("install.conf")]  # type: ignore[union-attr]  # fmt: skip
    assert edit.block == "BOOT_ROOT=/boot/efi"  # /etc's own layout is the administrator's


def test_refresh_plans_the_same_from_an_older_record_without_the_fat_uuid(tmp_path):
    from esp_mirror_plugin.pipeline.record import Record
    from esp_mirror_plugin.upkeep import settings

    record = Record("debian", "/dev/md/esp", "/boot/efi", "\\EFI\\systemd\\systemd-bootx64.efi", "Debian",
                    1 << 20, 512 << 20)  # fmt: skip
    setup = settings.setup(record, "a2824bdc:e2f95aef:83df651f:bf2ea709", str(tmp_path))
    assert setup.fs_uuid == "932D-8E71"  # derived from the array's UUID, as apply and adopt make the FAT
    assert load_profile("debian").name == setup.profile.name


ARCH_PRESET = """\
# mkinitcpio preset file for the 'linux' package (Arch's, as the package ships it)
#ALL_config="/etc/mkinitcpio.conf"
ALL_kver="/boot/vmlinuz-linux"

PRESETS=('default' 'fallback')

#default_config="/etc/mkinitcpio.conf"
default_image="/boot/initramfs-linux.img"
#default_uki="/efi/EFI/Linux/arch-linux.efi"

fallback_image="/boot/initramfs-linux-fallback.img"
fallback_options="-S autodetect"
"""


def test_arch_with_systemd_boot_is_told_when_mkinitcpio_puts_kernels_outside_the_esp(two_disks):
    preset = two_disks.target / "etc/mkinitcpio.d/linux.preset"
    preset.parent.mkdir(parents=True)
    preset.write_text(ARCH_PRESET)
    notes = next(g for g in plan_of(two_disks, "--profile", "arch", "--bootloader", "systemd-boot")["groups"]
                 if g["name"] == installed.GROUP)["notes"]  # fmt: skip
    assert (
        "mkinitcpio's preset etc/mkinitcpio.d/linux.preset puts /boot/initramfs-linux-fallback.img, "
        "/boot/initramfs-linux.img, /boot/vmlinuz-linux outside the mirrored ESP (/efi), where systemd-boot cannot "
        "read them: set its *_uki= into /efi/EFI/Linux/, or install kernels with kernel-install, which puts them on "
        "the ESP"
    ) in notes
    preset.write_text(ARCH_PRESET.replace("#default_uki", "default_uki"))  # a UKI on the ESP: fine
    notes = next(g for g in plan_of(two_disks, "--profile", "arch", "--bootloader", "systemd-boot")["groups"]
                 if g["name"] == installed.GROUP)["notes"]  # fmt: skip
    assert not any("mkinitcpio" in n for n in notes)


FINDMNT = """#!/bin/sh
# findmnt as the guard asks it: the UUID of what is mounted at the mount point, if anything
[ "$*" = "-n -o UUID --mountpoint $ESP_MOUNT" ] && [ -n "$FAT_UUID" ] && echo "$FAT_UUID"
exit 0
"""


@pytest.mark.real_processes  # sh runs the generated scripts
@pytest.mark.parametrize("profile", PROFILES)
def test_every_profiles_kernel_paths_stop_loudly_without_the_esp_and_go_on_with_it(two_disks, profile, tmp_path):
    """What the kernel paths of each distribution run, run here with the generated files: dpkg's
    kernel and initramfs hooks (initramfs-tools' and dracut's kernels on Debian and Ubuntu),
    kernel-install's plugin (dracut's path on Fedora, RHEL, openSUSE), pacman's hook (mkinitcpio on
    Arch), and install.conf sourced as kernel-install reads it. Only ``findmnt`` is a stand-in."""
    with_bootctl(two_disks, dpkg=profile in APT)
    steps = installed_steps(plan_of(two_disks, "--profile", profile, "--bootloader", "systemd-boot"))
    files = {"/" + os.path.relpath(s["path"], two_disks.target): s for s in steps if "path" in s}
    mountpoint = load_profile(profile).esp_mountpoint
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "findmnt").write_text(FINDMNT)
    guard = tmp_path / "esp-mounted"
    guard.write_text(files[anycaller.GUARD]["content"])
    for script in (bin_dir / "findmnt", guard):
        script.chmod(0o755)
    callers = [
        [anycaller.KERNEL_INSTALL_PLUGIN, "add", "6.1.0-99-amd64", f"{mountpoint}/x/6.1.0-99-amd64", "/boot/vmlinuz"]
    ]
    if profile in APT:
        callers += [
            [f"{d}/{anycaller.HOOK_NAME}", "6.1.0-99-amd64", "/boot/vmlinuz-6.1.0-99-amd64"]
            for d in anycaller.HOOK_DIRS
        ]
    if anycaller.PACMAN_HOOK in files:
        exec_line = next(x for x in files[anycaller.PACMAN_HOOK]["content"].splitlines() if x.startswith("Exec = "))
        callers.append([exec_line.removeprefix("Exec = ")])
    assert len(callers) == {"apt-get": 4, "pacman": 2}.get(load_profile(profile).packages.install[0], 1)
    for mounted, code in (("", 1), ("0000-0000", 1), ("C982-96CB", 0)):
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "ESP_MOUNT": mountpoint, "FAT_UUID": mounted}  # env -i
        for path, *args in callers:
            text = files[path]["content"] if path in files else f"#!/bin/sh\nexec {anycaller.GUARD}\n"
            script = tmp_path / "caller"
            script.write_text(text.replace(anycaller.GUARD, str(guard)))
            script.chmod(0o755)
            run = subprocess.run([str(script), *args], env=env, capture_output=True, text=True)
            assert run.returncode == code, (profile, path, mounted, run.stderr)
            if code:
                assert run.stderr.startswith(
                    f"esp-mirror: the mirrored ESP (/dev/md/esp, FAT UUID C982-96CB) is not mounted at {mountpoint}"
                )
                assert f"`mdadm --assemble --scan; mount {mountpoint}`" in run.stderr, run.stderr
                assert run.stderr.count("\n") == 1, run.stderr  # one line
    # kernel-install reads install.conf as shell assignments: BOOT_ROOT is the mirror, whatever the caller's environment
    conf = tmp_path / "install.conf"
    conf.write_text(files[anycaller.INSTALL_CONF]["block"] + "\n")
    read = subprocess.run(["sh", "-c", '. "$0"; echo "$BOOT_ROOT"', str(conf)], env={}, capture_output=True, text=True)
    assert read.stdout == f"{mountpoint}\n", read


@pytest.mark.parametrize(
    ("loader", "bootloader"),
    [("\\EFI\\debian\\uki.efi", "efi"), ("\\EFI\\ZBM\\VMLINUZ.EFI", "zfsbootmenu"), ("\\EFI\\debian\\uki.efi", None)],
)
def test_refresh_plans_no_guard_for_an_image_given_by_path_as_apply_did(tmp_path, loader, bootloader):
    """refresh and status plan the group again from the record: for an image given by path they
    must not plan GRUB's guard and apt hook, which apply never wrote (the VM test of the installed
    files found refresh listing them, from a loader path taken for GRUB's); a record older than
    its bootloader field is read by its loader path."""
    from esp_mirror_plugin.pipeline.record import Record
    from esp_mirror_plugin.upkeep import settings

    (tmp_path / "usr/bin").mkdir(parents=True)
    for program in ("apt-get", "dpkg-divert"):
        (tmp_path / "usr/bin" / program).write_text("#!/bin/sh\n")
        (tmp_path / "usr/bin" / program).chmod(0o755)
    record = Record("debian", "/dev/md/esp", "/boot/efi", loader, "Debian", 1 << 20, 512 << 20, bootloader=bootloader)
    steps, _ = installed.plan(settings.setup(record, "a2824bdc:e2f95aef:83df651f:bf2ea709", str(tmp_path)))
    paths = {"/" + os.path.relpath(s.path, tmp_path) for s in steps if hasattr(s, "path")}
    assert not paths & {anycaller.GUARD, anycaller.APT_HOOK}, paths
    grub = Record("debian", "/dev/md/esp", "/boot/efi", "\\EFI\\debian\\grubx64.efi", "Debian", 1 << 20, 512 << 20)
    steps, _ = installed.plan(settings.setup(grub, "a2824bdc:e2f95aef:83df651f:bf2ea709", str(tmp_path)))
    assert {anycaller.GUARD, anycaller.APT_HOOK} <= {
        "/" + os.path.relpath(s.path, tmp_path) for s in steps if hasattr(s, "path")
    }


@pytest.mark.parametrize(
    ("loader", "kind"),
    [
        ("\\EFI\\debian\\grubx64.efi", BootloaderKind.GRUB),
        ("\\EFI\\fedora\\shimx64.efi", BootloaderKind.GRUB),
        ("\\EFI\\systemd\\systemd-bootx64.efi", BootloaderKind.SYSTEMD_BOOT),
        ("\\EFI\\ZBM\\VMLINUZ.EFI", BootloaderKind.ZFSBOOTMENU),
        ("\\EFI\\debian\\espvm-payload.efi", BootloaderKind.EFI),
    ],
)
def test_a_record_older_than_its_bootloader_field_is_read_by_its_loader_path(loader, kind):
    from esp_mirror_plugin.pipeline.record import kind_of_loader

    assert kind_of_loader(loader) is kind


@pytest.mark.parametrize(
    ("loader_id", "expected"),
    [("debian", "debian"), (None, "systemd")],  # None: a record older than its loader_id field
)
def test_the_settings_comparison_reads_the_recorded_loader_id(tmp_path, loader_id, expected):
    from esp_mirror_plugin.pipeline.record import Record
    from esp_mirror_plugin.upkeep import settings

    record = Record("debian", "/dev/md/esp", "/boot/efi", "\\EFI\\systemd\\systemd-bootx64.efi", "Debian",
                    1 << 20, 512 << 20, bootloader="systemd-boot", loader_id=loader_id)  # fmt: skip
    setup = settings.setup(record, "a2824bdc:e2f95aef:83df651f:bf2ea709", str(tmp_path))
    assert (setup.bootloader, setup.loader_id) == (BootloaderKind.SYSTEMD_BOOT, expected)


def test_the_record_apply_writes_keeps_the_bootloader_kind_and_loader_id(tmp_path):
    from esp_mirror_plugin.pipeline import record as records

    written = records.Record("debian", "/dev/md/esp", "/boot/efi", "\\EFI\\systemd\\systemd-bootx64.efi", "Debian",
                             1 << 20, 512 << 20, bootloader="systemd-boot", loader_id="debian")  # fmt: skip
    path = tmp_path / records.PATH
    path.parent.mkdir(parents=True)
    path.write_text(written.render())
    loaded = records.load(str(tmp_path))
    assert loaded == written
    assert records.recorded_kind(loaded) is BootloaderKind.SYSTEMD_BOOT
    assert records.recorded_loader_id(loaded) == "debian"
