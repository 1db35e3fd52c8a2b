"""dracut's hostonly command line, seen where it matters: with the ESP mounted from md.

On the host there is no md, so hostonly dracut never sees an md mount and never writes
``rd.md.uuid=``; the check there cannot fail. In a guest it can: the dracut root (ci/roots.py)
as an ext4 disk, openSUSE's base configuration (hostonly="yes", hostonly_cmdline="yes"), and
``esp-mirror apply --profile opensuse --initramfs regenerate``, whose regeneration runs while
the new ESP array is mounted at /target/boot/efi. The same guest then builds a control image
(without kernel modules: quicker) with esp-mirror's drop-in moved away: it has a hostonly command
line, so the drop-in's "no" is what kept the real image free of one.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from ci.installed import root_image
from ci.roots import Root, writable_view
from ci.vm.scripts import esp_mirror_cli

# openSUSE's dracut base configuration (dracut-ng dracut.conf.d/opensuse/01-dist.conf).
OPENSUSE_DIST_CONF = 'hostonly="yes"\nhostonly_cmdline="yes"\n'


def dracut_root_image(root: Root, workdir: Path) -> Path:
    with writable_view(root, workdir / "dracut-view") as view:
        (view / "etc/dracut.conf.d/01-dist.conf").write_text(OPENSUSE_DIST_CONF)
        return root_image(view, workdir / "target-root.img", size_mib=1024)


def guest_script(payload: Path, kver: str, target_disk: str = "/dev/vdc") -> str:
    apply = [
        str(esp_mirror_cli()),
        "apply",
        "--yes",
        "--profile",
        "opensuse",
        "--disk",
        "/dev/vda",
        "--disk",
        "/dev/vdb",
        "--target",
        "/target",
        "--bootloader",
        "efi",
        "--efi-image",
        str(payload),
        "--initramfs",
        "regenerate",
        "--no-nvram",
    ]
    cmdline = (
        "mkdir -p /tmp/u && cd /tmp/u && lsinitrd --unpack {img} >/dev/null 2>&1; "
        'for f in etc/cmdline.d/*.conf; do [ -e "$f" ] && echo "$f: $(cat $f)"; done; true'
    )
    return "\n".join(
        [
            "set -eu",
            f"mkdir -p /target; mount {target_disk} /target",
            "echo '@@@ apply'",
            shlex.join(apply) + " 2>&1",
            "echo '@@@ esp-uuid'; mdadm --detail --export /dev/md/esp | sed -n 's/^MD_UUID=//p'",
            "echo '@@@ mounted'; grep ' /target/boot/efi ' /proc/self/mountinfo || true",
            # what dracut's hostonly detection (get_fs_env: blkid -u filesystem) sees on the devices
            (
                "echo '@@@ blkid-filesystem'; for dev in /dev/md/esp /dev/vda1; do echo \"$dev: $(blkid -u filesystem -o export $dev "
                "| grep '^TYPE=' || true)\"; done"
            ),
            "for fs in dev proc sys; do mount --bind /$fs /target/$fs; done",
            f"echo '@@@ image-cmdline'; chroot /target sh -c {shlex.quote(cmdline.format(img=f'/boot/initrd.img-{kver}'))}",
            "echo '@@@ image-modules'; chroot /target lsinitrd /boot/initrd.img-"
            + kver
            + " | sed -n '/dracut modules:/,/====/p'",
            "echo '@@@ image-mdadm.conf'; chroot /target lsinitrd -f etc/mdadm.conf /boot/initrd.img-" + kver,
            # the control: the same configuration without esp-mirror's drop-in. --no-kernel leaves
            # out the kernel modules (most of an image's build time under TCG); mdraid's module
            # writes its hostonly command line from the devices dracut sees, not from the kernel
            "mv /target/etc/dracut.conf.d/90-esp-mirror.conf /target/root/",
            f"chroot /target dracut -q --force --no-kernel /tmp/control.img {kver}",
            "rm -rf /target/tmp/u",
            f"echo '@@@ control-cmdline'; chroot /target sh -c {shlex.quote(cmdline.format(img='/tmp/control.img'))}",
            "for fs in sys proc dev; do umount /target/$fs; done",
            "umount /target/boot/efi; umount /target; mdadm --stop /dev/md/esp; sync",
            "",
        ]
    )
