"""ci/test's whole run: the suite in two lanes at once, one per core of CI's machine.

Every VM test boots a guest with one vCPU under TCG (ci/vm/qemu.py), which keeps one core busy:
two such guests at once each take about the time one takes alone, and a guest with two vCPUs
takes no less (docs/numbers.md, "CI"). So the suite runs as two lanes, each a series of pytest
runs, started together; the run fails when a pytest run of either lane fails. Each pytest run has
its own temporary directory; what the lanes share (the VM assets and the target roots in the
cache) is built once, under a lock (ci/vm/assets.py, cache_lock), whichever lane asks first.

Each line of output carries its lane's name; the summary at the end gives each pytest run's time.

    python -m ci.lanes            # what ci/test runs without arguments
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# The tests CI's time holds; `ci/test -m killloop` and `ci/test -m extended` run the others.
MARKERS = "not killloop and not extended"
# Lane one: the unit tests, then the longest module (Debian 13's chain of boots, ~20 min) and the
# power cuts; lane two: the host-side distribution tests, then every other VM module. Measured
# sums of the two are within a few minutes of each other (docs/numbers.md, "CI").
LANE_ONE_VM = ("tests/vm/test_installed_system.py", "tests/vm/test_interrupted.py")


@dataclass(frozen=True)
class Run:
    """One pytest run of a lane: its arguments after ``-m MARKERS``."""

    args: tuple[str, ...]

    @property
    def name(self) -> str:
        return " ".join(arg for arg in self.args if not arg.startswith("-"))


LANES: dict[str, tuple[Run, ...]] = {
    "one": (Run(("-q", "tests/unit")), Run(("-v", *LANE_ONE_VM))),
    "two": (Run(("-q", "tests/distro")), Run(("-v", "tests/vm", *(f"--ignore={m}" for m in LANE_ONE_VM)))),
}


@dataclass(frozen=True)
class Done:
    lane: str
    run: Run
    returncode: int
    seconds: float


def _pytest(lane: str, index: int, run: Run, basetemp: Path, lock: threading.Lock) -> Done:
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        MARKERS,
        "-p",
        "no:cacheprovider",  # two runs at once would write .pytest_cache together
        f"--basetemp={basetemp / f'{lane}-{index}'}",
        *run.args,
    ]
    start = time.monotonic()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            with lock:
                sys.stdout.write(f"[{lane}] {line}")
                sys.stdout.flush()
    return Done(lane, run, proc.returncode, time.monotonic() - start)


def _lane(lane: str, runs: Sequence[Run], basetemp: Path, lock: threading.Lock, done: list[Done]) -> None:
    for index, run in enumerate(runs):
        done.append(_pytest(lane, index, run, basetemp, lock))


def main() -> int:
    start = time.monotonic()
    lock = threading.Lock()
    done: list[Done] = []
    basetemp = Path(tempfile.mkdtemp(prefix="esp-mirror-lanes-"))
    threads = [
        threading.Thread(target=_lane, args=(lane, runs, basetemp, lock, done), name=lane)
        for lane, runs in LANES.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"\nci/test: two lanes, {time.monotonic() - start:.0f} s in all (temporary files: {basetemp})")
    for result in sorted(done, key=lambda d: d.lane):
        verdict = "passed" if result.returncode == 0 else f"FAILED (pytest exit {result.returncode})"
        print(f"  [{result.lane}] {result.run.name}: {verdict}, {result.seconds:.0f} s")
    every = sum(len(runs) for runs in LANES.values())
    if len(done) != every:
        print(f"ci/test: only {len(done)} of {every} pytest runs finished (see the traceback above)")
        return 1
    return 0 if all(result.returncode == 0 for result in done) else 1


if __name__ == "__main__":
    raise SystemExit(main())
