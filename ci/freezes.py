"""How often a TCG guest freezes while it writes EFI variables, by vCPU count (docs/numbers.md).

    .venv/bin/python -m ci.freezes --smp 2 --guests 8 --writes 50

Under TCG a guest froze now and then inside ``efibootmgr --create`` (every vCPU halted, qemu
idle, no output), in the installer guests (OVMF's plain build). Each guest here is one of them
that creates and deletes a boot entry ``--writes`` times, printing a line after each; a guest
whose heartbeat stops for 120 s is counted as frozen (ci/vm/qemu.py's detector), not run again.
One JSON line per guest, then the counts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from ci.vm import Assets, blank_disk, fresh_vars, run_in_guest
from ci.vm.qemu import GuestFroze

SCRIPT = r"""
set -eu
sgdisk --new=1:2048:0 --typecode=1:EF00 /dev/vda >/dev/null
for n in $(seq {writes}); do
    efibootmgr --quiet --create --disk /dev/vda --part 1 --label "probe $n" --loader '\EFI\probe.efi'
    number=$(efibootmgr | sed -n "s/^Boot\([0-9A-F]*\)\* probe $n\$/\1/p")
    efibootmgr --quiet --bootnum "$number" --delete-bootnum
    echo "write $n $(cut -d' ' -f1 /proc/uptime)"
done
"""


def one_guest(work: Path, index: int, writes: int, assets: Assets) -> dict[str, object]:
    disk = blank_disk(work / f"probe-{index}.img", 64)
    vars_file = fresh_vars(work / f"probe-{index}-vars.fd", assets)
    started = time.monotonic()
    try:
        result = run_in_guest(
            SCRIPT.format(writes=writes),
            [disk],
            vars_file,
            300 + 20 * writes,
            assets=assets,
            log_dir=work,
            retry_frozen=False,
        )
    except GuestFroze as froze:
        done = str(froze).count("write ")  # the end of the output, as far as it got
        return {
            "guest": index,
            "frozen": True,
            "writes_done_at_least": done,
            "seconds": round(time.monotonic() - started),
        }
    done = result.stdout.count("write ")
    return {"guest": index, "frozen": False, "writes_done": done, "rc": result.rc, "seconds": round(result.seconds)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ci.freezes", description=__doc__.splitlines()[0])
    parser.add_argument("--smp", default="1", help="vCPUs per guest (ESP_MIRROR_VM_SMP)")
    parser.add_argument("--guests", type=int, default=8)
    parser.add_argument("--writes", type=int, default=50, help="boot entries each guest creates and deletes")
    args = parser.parse_args(argv)
    os.environ["ESP_MIRROR_VM_SMP"] = args.smp
    assets = Assets.ensure()
    frozen = writes = 0
    with tempfile.TemporaryDirectory(prefix="esp-mirror-freezes-") as tmp:
        for index in range(args.guests):
            result = one_guest(Path(tmp), index, args.writes, assets)
            print(json.dumps(result), flush=True)
            frozen += bool(result["frozen"])
            writes += int(result.get("writes_done", result.get("writes_done_at_least", 0)))  # type: ignore[call-overload]
    print(f"smp {args.smp}: {frozen} of {args.guests} guests froze; {writes} entry writes done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
