"""openSUSE's hostonly_cmdline="yes" with the ESP array mounted while dracut runs: esp-mirror's
drop-in must keep any hostonly command line (rd.md.uuid= of the ESP included) out of the image,
so the initramfs never waits for the ESP array (ci/dracut_vm.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ci import dracut_vm, roots
from ci.installed import parse_sections
from ci.measure import measurements
from ci.vm import Assets, blank_disk, fresh_vars, run_in_guest

# ~9 minutes under TCG (two dracut images): run by hand, `ci/test -m extended`; CI's budget keeps
# the host-side dracut tests (tests/distro) and the unit tests of the drop-in
pytestmark = [pytest.mark.vm, pytest.mark.installed, pytest.mark.extended]


def test_opensuse_image_has_no_hostonly_cmdline_with_the_esp_mounted_from_md(
    vm_assets: Assets, payload_efi: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    root = roots.ensure_root(roots.DRACUT)
    image = dracut_vm.dracut_root_image(root, tmp_path)
    disks = [blank_disk(tmp_path / f"disk-{n}.img", 1024) for n in "ab"]
    guest = run_in_guest(
        dracut_vm.guest_script(payload_efi, root.kver),
        [*disks, image],
        fresh_vars(tmp_path / "vars.fd", vm_assets),
        assets=vm_assets,
        log_dir=tmp_path,
        timeout=1500,
    )
    sections, _ = parse_sections(guest.stdout)
    assert guest.rc == 0, f"{guest.stdout[-3000:]}\n{guest.stderr[-3000:]}\nserial log: {guest.serial_log}"
    step = re.search(
        r"\] chroot /target dracut --regenerate-all --force\n.*?done \(([\d.]+) s\)", sections["apply"], re.DOTALL
    )
    assert step and sections["apply"].count("dracut --regenerate-all") == 1, sections["apply"]
    measurements(request.config).record(
        "regeneration",
        "opensuse: dracut --regenerate-all --force",
        float(step.group(1)),
        "in the TCG guest, ESP array mounted",
    )
    esp_uuid = sections["esp-uuid"].strip()
    assert "/target/boot/efi" in sections["mounted"]  # dracut ran with the md ESP mounted
    assert "mdraid" in sections["image-modules"].split()
    assert f"UUID={esp_uuid}" in sections["image-mdadm.conf"]
    # with esp-mirror's drop-in: no hostonly command line at all, so nothing that makes the
    # initramfs wait for the ESP array
    assert sections["image-cmdline"].strip() == "", sections["image-cmdline"]
    # the control, openSUSE's settings alone, writes one: the drop-in's "no" is what won
    assert "etc/cmdline.d/" in sections["control-cmdline"], sections["control-cmdline"]
