"""The whole suite: the unit tests, then the rest as two pytest runs at once (``ci/test``
without arguments).

Almost all of the suite's time is TCG guests, and a guest mostly keeps one host core busy: two
lanes on a 2-core machine take about half the time of one. What both lanes read is made first,
one at a time (the Debian target roots, the guest kernel, OVMF, the payload), so no two builds
race for one cache entry. Lane A's output is shown as it runs, lane B's when it is done; each
lane has its own pytest base directory. The exit code is the first lane's failure, else 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# The unit tests run first, alone (half a minute; each test directory's conftest.py is imported
# as "conftest", and the unit tests import from theirs, so they get a pytest run of their own).
UNIT = "tests/unit"
# Balanced by measured durations (pytest --durations); every other test module is in exactly one
# lane (tests/unit/test_lanes.py holds this true).
LANES: dict[str, tuple[str, ...]] = {
    "A": (
        "tests/vm/test_interrupted.py",
        "tests/vm/test_upkeep.py",
        "tests/vm/test_dracut_in_guest.py",
    ),
    "B": (
        "tests/distro",
        "tests/vm/test_install.py",
        "tests/vm/test_installed_system.py",
        "tests/vm/test_systemd_boot.py",
    ),
}


def warm() -> None:
    """Build or find everything both lanes use, before they start."""
    from ci import roots
    from ci.vm import Assets
    from ci.vm.payload import build_payload

    started = time.monotonic()
    roots.main()
    assets = Assets.ensure()
    build_payload(assets, assets.cache_dir / "payload" / "espvm-payload.efi")
    print(f"ci/lanes: roots, guest kernel, OVMF and payload ready in {time.monotonic() - started:.0f} s", flush=True)


def main() -> int:
    os.chdir(REPO_ROOT)
    base = Path(tempfile.gettempdir()) / "esp-mirror-ci"
    base.mkdir(exist_ok=True)
    pytest = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--durations=15"]
    rc_unit = subprocess.run([*pytest, f"--basetemp={base}/unit", UNIT], check=False).returncode
    warm()
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as log_b:
        b = subprocess.Popen(
            [*pytest, f"--basetemp={base}/lane-B", *LANES["B"]], stdout=log_b, stderr=subprocess.STDOUT
        )
        try:
            rc_a = subprocess.run([*pytest, f"--basetemp={base}/lane-A", *LANES["A"]], check=False).returncode
            seconds_a = time.monotonic() - started
            rc_b = b.wait()
        finally:
            if b.poll() is None:
                b.kill()
                b.wait()
        seconds_b = time.monotonic() - started
        log_b.seek(0)
        print(f"\n{'=' * 30} lane B {'=' * 30}", flush=True)
        sys.stdout.write(log_b.read())
    print(
        f"ci/lanes: unit tests exit {rc_unit}; lane A {seconds_a:.0f} s (exit {rc_a}), "
        f"lane B {seconds_b:.0f} s (exit {rc_b})",
        flush=True,
    )
    return rc_unit or rc_a or rc_b


if __name__ == "__main__":
    sys.exit(main())
