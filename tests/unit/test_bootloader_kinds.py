"""The table of bootloader kinds (esp_mirror_plugin/pipeline/bootloaders.py) is complete: every
kind has its row, and a record older than its ``bootloader`` field still names the kind whose
loader path it holds, so the upkeep commands never take a new kind for another one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from esp_mirror_plugin.pipeline.bootloaders import BOOTLOADERS, BootloaderKind, spec
from esp_mirror_plugin.pipeline.profiles import load_profile
from esp_mirror_plugin.pipeline.record import kind_of_loader


def test_every_kind_has_one_row_of_the_table():
    assert list(BOOTLOADERS) == list(BootloaderKind)


def test_exactly_one_kind_takes_the_loader_paths_no_other_kind_recognises():
    assert [k for k in BootloaderKind if spec(k).recognises is None] == [BootloaderKind.EFI]


@pytest.mark.parametrize("kind", list(BootloaderKind))
@pytest.mark.parametrize("suffix", ["x64", "aa64"])
@pytest.mark.parametrize("has_shim", [False, True])
def test_the_loader_path_apply_records_names_its_kind_again(kind, suffix, has_shim):
    request = SimpleNamespace(loader_id="debian", efi_image="/srv/payload/linux.efi", bootloader=kind)
    target = SimpleNamespace(has_shim=lambda: has_shim, exists=lambda path: False)
    loader = spec(kind).loader(request, load_profile("debian"), suffix, target)  # type: ignore[arg-type]
    assert kind_of_loader(loader) is kind
