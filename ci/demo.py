"""The README demo: install on two blank disk images, boot each alone, print a table.

Usage: ci/demo [--workdir DIR]   (default: a new directory under /tmp, kept for inspection)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from ci.scenarios import boot_alone, detail, disk_serial, entry_label, install, partition_uuid
from ci.vm import Assets, blank_disk, build_payload, fresh_vars, preflight


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="where the disk images, NVRAM and logs go")
    args = parser.parse_args()
    reason = preflight()
    if reason:
        print(f"ci/demo: cannot run: {reason}", file=sys.stderr)
        return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="esp-mirror-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"esp-mirror demo in {work} (downloads are cached; the first run fetches ~75 MB)")
    assets = Assets.ensure()
    payload = build_payload(assets, assets.cache_dir / "payload" / "espvm-payload.efi")
    disks = [blank_disk(work / f"disk-{n}.img", 1024) for n in "ab"]
    nvram = fresh_vars(work / "install-vars.fd", assets)

    rows: list[tuple[str, str, float, bool]] = []
    started = time.monotonic()
    result = install(disks, nvram, payload, assets=assets)
    md = detail(result) if result.guest.rc == 0 else {}
    ok = md.get("MD_LEVEL") == "raid1" and md.get("MD_METADATA") == "1.0"
    rows.append(
        (
            "install: esp-mirror apply, 2 disks",
            f"RAID1 {md.get('MD_NAME', '?')}, metadata {md.get('MD_METADATA', '?')}",
            time.monotonic() - started,
            ok,
        )
    )
    print(result.section("apply") if result.runs and "apply" in result.runs[0] else result.guest.stderr)
    cases = [
        ("boot disk A alone (install NVRAM)", 0, nvram),
        ("boot disk B alone (install NVRAM)", 1, nvram),
        ("boot disk B alone (fresh NVRAM)", 1, None),
    ]
    for title, index, vars_from in cases:
        started = time.monotonic()
        try:
            boot = boot_alone(disks[index], vars_from, work, title.split("(")[0].strip().replace(" ", "-"), assets)
        except Exception as exc:  # report it in the table and keep going: the demo shows every case
            rows.append((title, f"no boot: {exc}", time.monotonic() - started, False))
            continue
        want_entry = entry_label(disk_serial(index)) if vars_from else None
        passed = boot.loader_device_partuuid == partition_uuid(disks[index]) and (
            want_entry is None or boot.boot_entry_description == want_entry
        )
        used = boot.boot_entry_description if vars_from else boot.loader_image_identifier
        rows.append((title, str(used), time.monotonic() - started, passed))

    width = max(len(r[0]) for r in rows)
    print(f"\n{'scenario':{width}}  {'entry used':40}  {'seconds':>7}  result")
    for title, used, seconds, passed in rows:
        print(f"{title:{width}}  {used:40}  {seconds:7.1f}  {'PASS' if passed else 'FAIL'}")
    return 0 if all(r[3] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
