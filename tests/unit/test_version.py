"""One version: ``esp_mirror_plugin.__version__``. The wheel's metadata reads it (pyproject.toml's
dynamic version) and the Ansible collection, which ships apart from the wheel, states the same."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

import esp_mirror_plugin

ROOT = Path(__file__).resolve().parents[2]
GALAXY = ROOT / "ansible" / "ansible_collections" / "esp_mirror" / "mirror" / "galaxy.yml"


def test_the_version_is_a_release_number() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", esp_mirror_plugin.__version__)


def test_pyproject_takes_the_version_from_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "esp_mirror_plugin.__version__"}


def test_the_ansible_collection_has_the_packages_version() -> None:
    assert yaml.safe_load(GALAXY.read_text())["version"] == esp_mirror_plugin.__version__
