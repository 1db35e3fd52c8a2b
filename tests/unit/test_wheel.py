"""The entry point and the profiles work from an installed wheel, not only from the source tree,
and ``man esp-mirror`` finds the page a pip install puts into its venv.

THIS TEST STARTS REAL PROCESSES (pip, python and man). It builds the wheel from a copy of the
source tree (so it never writes build/ into the repository), installs it with ``pip install
--target``, and imports it in a fresh ``python -S`` whose path holds only the installed wheel and
its two runtime dependencies: neither the source tree nor the editable install in the venv can
stand in for the wheel. It also installs the wheel into a fresh venv, whose bin on PATH is all
man(1) needs to find the manual page there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pluggy
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
NOT_PACKAGED = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "tests", "ci", ".ci", ".pytest_cache", "__pycache__"
)
PROBE = """
import json, pluggy
from esp_mirror_plugin import hookspecs
from esp_mirror_plugin.pipeline import profiles
pm = pluggy.PluginManager("esp_mirror")
pm.add_hookspecs(hookspecs)
loaded = pm.load_setuptools_entrypoints("esp_mirror")
pm.check_pending()
plugin = pm.get_plugin("esp_mirror")
debian = profiles.load_profile("debian")
print(json.dumps({
    "loaded": loaded,
    "plugin_file": plugin.__file__,
    "hooks": sorted(h.name for h in pm.get_hookcallers(plugin)),
    "profiles": profiles.builtin_names(),
    "debian": [debian.loader_id, debian.mdadm_conf, debian.source],
}))
"""


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)
    assert done.returncode == 0, f"{' '.join(argv)}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the source tree."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.fail(
            "setuptools is not installed in the venv: the wheel cannot be built (ci/bootstrap must install it)",
            pytrace=False,
        )
    work = tmp_path_factory.mktemp("wheel")
    source, dist = work / "src", work / "dist"
    shutil.copytree(REPO, source, symlinks=True, ignore=NOT_PACKAGED)
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "-w",
            str(dist),
            str(source),
        ]
    )
    [built] = dist.glob("esp_mirror_plugin-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(directory the wheel is installed in, environment for a python that sees only it)."""
    work = tmp_path_factory.mktemp("installed")
    target, deps = work / "installed", work / "deps"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            "--target",
            str(target),
            str(wheel),
        ]
    )
    deps.mkdir()
    for module in (pluggy, yaml):  # the runtime dependencies, and nothing else from the venv
        package = Path(module.__file__).parent
        (deps / package.name).symlink_to(package)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": f"{target}:{deps}"}
    return target, env


@pytest.mark.real_processes
def test_entry_point_from_the_wheel_registers_the_plugin_and_profiles_ship_inside(installed, tmp_path):
    target, env = installed
    done = run([sys.executable, "-S", "-c", PROBE], cwd=tmp_path, env=env)
    probe = json.loads(done.stdout)
    assert probe["loaded"] == 1
    assert Path(probe["plugin_file"]).resolve().is_relative_to(target.resolve())
    assert probe["hooks"] == ["bootloader", "initramfs_config", "post_format", "pre_partition"]
    assert probe["profiles"] == ["alpine", "arch", "debian", "fedora", "gentoo", "opensuse", "rhel", "ubuntu", "void"]
    loader_id, mdadm_conf, source = probe["debian"]
    assert (loader_id, mdadm_conf) == ("debian", "/etc/mdadm/mdadm.conf")
    assert Path(source).resolve().is_relative_to(target.resolve())


@pytest.mark.real_processes
def test_the_cli_runs_from_the_wheel(installed, tmp_path):
    _, env = installed
    done = run([sys.executable, "-S", "-m", "esp_mirror_plugin", "profiles", "ubuntu"], cwd=tmp_path, env=env)
    assert "# merged with debian (extends)" in done.stdout and "loader_id: ubuntu\n" in done.stdout
    assert done.stdout.splitlines()[0].startswith("# ubuntu: ") and "/installed/" in done.stdout.splitlines()[0]


@pytest.mark.real_processes
def test_the_manual_page_ships_in_the_wheel(installed):
    target, _ = installed
    shipped = REPO / "esp_mirror_plugin" / "man" / "esp-mirror.8"
    assert (target / "esp_mirror_plugin" / "man" / "esp-mirror.8").read_bytes() == shipped.read_bytes()


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv (no pip of its own) with the wheel installed by pip, as a user installs it."""
    where = tmp_path_factory.mktemp("venv") / "esp-mirror"
    run([sys.executable, "-m", "venv", "--without-pip", str(where)])
    run([sys.executable, "-m", "pip", "--python", str(where / "bin/python"), "install", "--no-deps", "--no-index",
         "--quiet", str(wheel)])  # fmt: skip
    return where


def man(venv: Path, *argv: str, path: str) -> subprocess.CompletedProcess:
    """man(1) as a user of that venv runs it: PATH as given, no MANPATH, nothing from this environment."""
    if shutil.which("man") is None:
        pytest.fail("man is missing: install man-db and groff-base (ci/bootstrap does)", pytrace=False)
    env = {"PATH": path, "HOME": str(venv.parent), "LANG": "C.UTF-8", "MANWIDTH": "80", "MANPAGER": "cat"}
    return subprocess.run(["man", *argv], capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.mark.real_processes
def test_man_finds_the_page_of_a_pip_install_from_the_venvs_bin_on_path(venv):
    page = venv / "share/man/man8/esp-mirror.8"
    assert page.read_bytes() == (REPO / "esp_mirror_plugin" / "man" / "esp-mirror.8").read_bytes()
    path = f"{venv}/bin:/usr/bin:/bin"
    where = man(venv, "-w", "esp-mirror", path=path)
    assert (where.returncode, where.stdout.strip()) == (0, str(page)), where.stderr
    shown = man(venv, "esp-mirror", path=path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split(maxsplit=1)[0] == "ESP-MIRROR(8)" and "\nSYNOPSIS\n" in shown.stdout
    elsewhere = man(venv, "-w", "esp-mirror", path="/usr/bin:/bin")  # found through the venv's bin only
    assert str(page) not in elsewhere.stdout


@pytest.mark.real_processes
def test_a_pip_install_puts_the_bash_completion_where_bash_completion_looks_from_the_venvs_bin(venv, installed):
    """bash-completion looks for a command's script in <prefix>/share/bash-completion/completions,
    <prefix> being where the command's bin/ is; the package carries it too (apply installs it)."""
    shipped = (REPO / "esp_mirror_plugin" / "completion" / "esp-mirror").read_bytes()
    assert (venv / "bin/esp-mirror").is_file()
    assert (venv / "share/bash-completion/completions/esp-mirror").read_bytes() == shipped
    target, _ = installed
    assert (target / "esp_mirror_plugin" / "completion" / "esp-mirror").read_bytes() == shipped
