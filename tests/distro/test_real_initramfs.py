"""The real initramfs generators, run by esp-mirror's initramfs_config hook in a Debian 12 chroot.

Driven as an installer drives esp-mirror (ci/installer.py): prepare() on two image-file disks,
post_format's file edits (the ESP's ARRAY line in mdadm.conf; the host has no md to create the
array), then initramfs_config for real, with a runner that counts the regenerations. The image
that comes out is read back with the generator's own tools (lsinitramfs/unmkinitramfs, lsinitrd).

dracut runs with each profile's settings on Debian's dracut, with the distribution's own base
configuration (its 01-dist.conf) in place, since that is what esp-mirror's drop-in must override.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from ci.installer import HostInstall, prepare_on_images
from ci.measure import measurements
from ci.roots import Root, chroot_mounts, writable_view

pytestmark = pytest.mark.distro

# What each distribution ships as its dracut base configuration (only the settings that decide
# what happens to an md device): dracut-ng dracut.conf.d/fedora/01-dist.conf and
# dracut.conf.d/opensuse/01-dist.conf; Void ships none (upstream defaults, hostonly off).
DIST_DRACUT_CONF = {
    "fedora": 'hostonly="yes"\nhostonly_cmdline="yes"\n',
    "opensuse": 'hostonly="yes"\nhostonly_cmdline="yes"\n',
    "void": None,
}
# Void's `xbps-reconfigure --force --all` reconfigures the kernel package, whose post-install hook
# (void-packages srcpkgs/dracut/files/kernel-hook-postinst) runs dracut. Stand-in for the chroot:
VOID_XBPS_RECONFIGURE = """\
#!/bin/sh
# Test stand-in for Void's xbps-reconfigure: what reconfiguring the kernel package runs, per kernel.
[ "$*" = "--force --all" ] || { echo "xbps-reconfigure stand-in: unexpected arguments: $*" >&2; exit 2; }
cd / || exit 1
for dir in /lib/modules/*; do
    VERSION=${dir##*/}
    dracut -q --force boot/initramfs-${VERSION}.img ${VERSION} || exit
done
"""


def _chroot(target: Path, *argv: str) -> str:
    out = subprocess.run(
        ["chroot", str(target), *argv],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
    )
    assert out.returncode == 0, f"chroot {target} {' '.join(argv)} exited {out.returncode}:\n{out.stderr}"
    return out.stdout


_LS_LINE = re.compile(r"^[-dlcbps][-rwxsStT]{9}\s")


def _lsinitrd(listing: str) -> tuple[list[str], list[str]]:
    """(dracut modules, paths) from lsinitrd's output (any early-microcode part included)."""
    modules = listing.split("dracut modules:", 1)[1].split("=" * 20, 1)[0].split()
    paths = [line.split()[8] for line in listing.splitlines() if _LS_LINE.match(line) and len(line.split()) > 8]
    return modules, paths


def _cmdline_files(target: Path, image: str) -> dict[str, str]:
    """The command line files baked into a dracut image (etc/cmdline.d/*.conf), with their text."""
    _, paths = _lsinitrd(_chroot(target, "lsinitrd", image))
    return {
        p: _chroot(target, "lsinitrd", "-f", p, image)
        for p in paths
        if p.startswith("etc/cmdline.d/") and p.endswith(".conf")
    }


def _run_initramfs_config(install: HostInstall) -> None:
    install.post_format_files()
    install.initramfs_config()
    assert install.runner.count == 1, f"{install.runner.count} regenerations in one apply:\n{install.log.getvalue()}"
    [(_, _, result)] = install.runner.regenerations
    assert result.ok, f"{' '.join(result.argv)} exited {result.returncode}:\n{result.stderr}"


def _esp_array_line(install: HostInstall, text: str) -> list[str]:
    uuid = install.ctx.layout.array_uuid
    return [line for line in text.splitlines() if line.startswith("ARRAY ") and f"UUID={uuid}" in line]


def test_debian_initramfs_tools_image_carries_the_esp_array(
    initramfs_tools_root: Root, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    root = initramfs_tools_root
    with writable_view(root, tmp_path / "view") as target, chroot_mounts(target):
        # MODULES=dep needs the root's block device; a chroot on a directory has none
        # ("mkinitramfs: failed to determine device for /"), so the host uses Debian's default.
        (target / "etc/initramfs-tools/conf.d/zz-host-chroot.conf").write_text("MODULES=most\n")
        image = target / "boot" / root.initrd.name
        before = image.stat().st_mtime_ns
        install = prepare_on_images("debian", target, tmp_path)
        _run_initramfs_config(install)
        assert image.stat().st_mtime_ns != before, "update-initramfs left the image as it was"
        measurements(request.config).record(
            "regeneration", "debian: update-initramfs -u -k all", install.runner.seconds, "host chroot, MODULES=most"
        )

        conf = (target / "etc/mdadm/mdadm.conf").read_text()
        assert len(_esp_array_line(install, conf)) == 1, conf
        listing = _chroot(target, "lsinitramfs", f"/boot/{image.name}").split()
        assert "etc/mdadm/mdadm.conf" in listing
        assert any(p.endswith("/raid1.ko") for p in listing) and "usr/sbin/mdadm" in listing
        _chroot(target, "unmkinitramfs", f"/boot/{image.name}", "/tmp/unpacked")
        (inside,) = (target / "tmp/unpacked").glob("**/etc/mdadm/mdadm.conf")
        assert _esp_array_line(install, inside.read_text()), inside.read_text()
        assert inside.read_text() == conf  # the image holds the new mdadm.conf, not a stale one


# openSUSE's base configuration is Fedora's (hostonly and hostonly_cmdline yes) and both run
# Debian's dracut here, so its host run repeats Fedora's; what differs (the profile's files and
# argv) the unit tests assert exactly. It runs with the extended set, next to openSUSE's dracut
# in a guest (tests/vm/test_dracut_in_guest.py), saving CI ~45 s.
DRACUT_PROFILES = [
    pytest.param(p, marks=pytest.mark.extended) if p == "opensuse" else p for p in sorted(DIST_DRACUT_CONF)
]


@pytest.mark.parametrize("profile", DRACUT_PROFILES)
def test_dracut_image_carries_mdraid_and_the_esp_array_but_no_rd_md_uuid(
    profile: str, dracut_root: Root, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    root = dracut_root
    with writable_view(root, tmp_path / "view") as target, chroot_mounts(target):
        base = DIST_DRACUT_CONF[profile]
        if base is not None:
            (target / "etc/dracut.conf.d/01-dist.conf").write_text(base)
        image = target / "boot" / root.initrd.name
        if profile == "void":
            shim = target / "usr/sbin/xbps-reconfigure"
            shim.write_text(VOID_XBPS_RECONFIGURE)
            shim.chmod(0o755)
            image = target / "boot" / f"initramfs-{root.kver}.img"
        before = image.stat().st_mtime_ns if image.exists() else None
        install = prepare_on_images(profile, target, tmp_path, foreign=True)  # another distribution on Debian
        _run_initramfs_config(install)
        assert image.exists() and image.stat().st_mtime_ns != before, f"{image} was not rebuilt"
        argv = " ".join(install.ctx.profile.initramfs.regenerate)
        measurements(request.config).record(
            "regeneration", f"{profile}: {argv}", install.runner.seconds, "host chroot, Debian's dracut 059"
        )

        dropin = (target / "etc/dracut.conf.d/90-esp-mirror.conf").read_text()
        assert 'hostonly_cmdline="no"' in dropin and 'add_dracutmodules+=" mdraid "' in dropin
        rel = f"/boot/{image.name}"
        modules, paths = _lsinitrd(_chroot(target, "lsinitrd", rel))
        assert "mdraid" in modules, modules
        # mdraid's files: mdadm and md's udev rules (incremental assembly). Kernel modules are
        # not asserted: hostonly dracut takes only md modules loaded on the build machine, and
        # this host has no md (in an installer the new ESP array has them loaded).
        assert {"usr/sbin/mdadm", "usr/lib/udev/rules.d/64-md-raid-assembly.rules"} <= set(paths), paths
        assert "etc/mdadm.conf" in paths, "mdadmconf=yes: the image must carry /etc/mdadm.conf"
        inside = _chroot(target, "lsinitrd", "-f", "etc/mdadm.conf", rel)
        assert _esp_array_line(install, inside), inside
        baked = _cmdline_files(target, rel)
        assert not {p: t for p, t in baked.items() if "rd.md" in t}, baked
        if base is not None and 'hostonly_cmdline="yes"' in base:
            # The distribution says yes, esp-mirror's later drop-in says no, and no wins: the image
            # has no hostonly command line at all. The control (the same dracut run without the
            # drop-in) shows that here the distribution's setting would have written one.
            assert baked == {}, baked
            (target / "etc/dracut.conf.d/90-esp-mirror.conf").rename(target / "root/90-esp-mirror.conf")
            _chroot(target, "dracut", "-q", "--force", "/tmp/control.img", root.kver)
            assert _cmdline_files(target, "/tmp/control.img"), "the control wrote no command line either"
        if profile == "void":  # the stand-in wrote Void's image; Debian's own is untouched
            assert os.path.getmtime(target / "boot" / root.initrd.name) == os.path.getmtime(root.initrd)
