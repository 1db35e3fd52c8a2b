"""Guest shell scripts shared by the VM tests and ci/bench: the hand recipe and esp-mirror apply."""

from __future__ import annotations

import functools
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HAND_RECIPE = REPO_ROOT / "ci" / "hand-recipe.sh"


@functools.cache
def esp_mirror_cli() -> Path:
    """The esp-mirror a guest runs: the zip application of this very source (what apply puts on
    an installed system), written once per content into the VM cache. A guest reads it as one
    file over 9p, where the venv's CLI imports hundreds: each start in a TCG guest takes about
    7 s instead of about 9 (measured with `status`, three runs each)."""
    from ci.vm.assets import default_cache_dir
    from esp_mirror_plugin.system import zipapp

    app = zipapp.build()
    path = default_cache_dir() / "zipapp" / f"esp-mirror-{app.sha256[:16]}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_bytes(app.data)
        tmp.chmod(0o755)
        tmp.rename(path)
    return path


def guest_device(index: int) -> str:
    """Return the guest's name for the disk at ``index`` of the list given to qemu: /dev/vda, /dev/vdb, ..."""
    return f"/dev/vd{chr(ord('a') + index)}"


def hand_recipe_argv(efi_image: Path, devices: Sequence[str]) -> list[str]:
    """Return the command that runs ci/hand-recipe.sh in the guest (the host root is the guest's root)."""
    return ["sh", str(HAND_RECIPE), str(efi_image), *devices]


def esp_mirror_apply_argv(
    efi_image: Path,
    devices: Sequence[str],
    cli: Path | None = None,
    *,
    target: str = "/",
    initramfs: str = "skip",
    verb: str = "apply",
) -> list[str]:
    """Return the esp-mirror command equivalent to the hand recipe (default target: the running guest).

    ``verb="plan"`` gives the same command's plan, which reads every module ``apply`` does.
    """
    argv = [str(cli or esp_mirror_cli()), verb, *(["--yes"] if verb == "apply" else []), "--profile", "debian"]
    for device in devices:
        argv += ["--disk", device]
    return [*argv, "--target", target, "--bootloader", "efi", "--efi-image", str(efi_image), "--initramfs", initramfs]


def script(*commands: Sequence[str], prelude: str = "") -> str:
    """Return a ``set -eu`` shell script: ``prelude`` (e.g. shell functions), then ``commands`` (argv lists)."""
    return "set -eu\n" + prelude + "".join(shlex.join(command) + "\n" for command in commands)
