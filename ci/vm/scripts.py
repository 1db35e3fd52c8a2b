"""Guest shell scripts shared by the VM tests and ci/bench: the hand recipe and esp-mirror apply."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HAND_RECIPE = REPO_ROOT / "ci" / "hand-recipe.sh"
# The CLI installed with the running interpreter (the project's venv when tests run with it).
ESP_MIRROR_CLI = Path(sys.prefix) / "bin" / "esp-mirror"


def guest_device(index: int) -> str:
    """Return the guest's name for the disk at ``index`` of the list given to qemu: /dev/vda, /dev/vdb, ..."""
    return f"/dev/vd{chr(ord('a') + index)}"


def hand_recipe_argv(efi_image: Path, devices: Sequence[str]) -> list[str]:
    """Return the command that runs ci/hand-recipe.sh in the guest (the host root is the guest's root)."""
    return ["sh", str(HAND_RECIPE), str(efi_image), *devices]


def esp_mirror_apply_argv(
    efi_image: Path,
    devices: Sequence[str],
    cli: Path = ESP_MIRROR_CLI,
    *,
    target: str = "/",
    initramfs: str = "skip",
    verb: str = "apply",
) -> list[str]:
    """Return the esp-mirror command equivalent to the hand recipe (default target: the running guest).

    ``verb="plan"`` gives the same command's plan, which reads every module ``apply`` does.
    """
    argv = [str(cli), verb, *(["--yes"] if verb == "apply" else []), "--profile", "debian"]
    for device in devices:
        argv += ["--disk", device]
    return [*argv, "--target", target, "--bootloader", "efi", "--efi-image", str(efi_image), "--initramfs", initramfs]


def script(*commands: Sequence[str], prelude: str = "") -> str:
    """Return a ``set -eu`` shell script: ``prelude`` (e.g. shell functions), then ``commands`` (argv lists)."""
    return "set -eu\n" + prelude + "".join(shlex.join(command) + "\n" for command in commands)
