"""Debian target roots for the real-distribution tests: built once with mmdebstrap, then cached.

A target root is what an installer has unpacked before it calls esp-mirror's system hooks: a
kernel, mdadm, the partitioning and FAT tools, efibootmgr and one initramfs generator. Two kinds:

* ``initramfs-tools``: Debian's own generator, plus GRUB (grub-efi-amd64, whose postinst runs on
  upgrades), systemd-boot, python3 and mtools (for the esp-mirror apply leaves on the installed
  system), so the bootloader tests and the installed-system boots use it too;
* ``dracut``: Debian's dracut, the same upstream that Fedora, openSUSE, Void and Gentoo use.

Packages come from the machine's own apt sources (the Debian entries of /etc/apt/sources.list*),
so nothing names a mirror host. A root is built into
``<cache>/roots/<name>-<hash>``, where the hash covers the suite, the package list, the build
hooks and the sources, so a change to any of them builds a new root, and an unchanged one is
reused across test runs (``<cache>`` is ``$ESP_MIRROR_VM_CACHE``, else ~/.cache/esp-mirror-vm).

Tests never change a cached root: :func:`writable_view` gives each one an overlay on top of it,
and :func:`chroot_mounts` binds /proc, /sys and /dev into a view for the time a test needs them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ci.vm.assets import cache_lock, default_cache_dir
from ci.vm.command import HOST_PATH, CommandError, run_command

SUITE = "bookworm"  # Debian 12: the host's own release, and the roots' unless a spec names another
_STAMP = ".espvm-root.json"
_BUILD_VERSION = 1  # bump when the build recipe changes in a way the hash below does not see

COMMON_PACKAGES = (
    "linux-image-amd64", "mdadm", "gdisk", "fdisk", "dosfstools", "efibootmgr",
    "systemd-sysv", "udev", "kmod", "e2fsprogs", "zstd",
)  # fmt: skip

# initramfs-tools with MODULES=dep: the image holds the modules this machine's root needs, not
# "most" of them (a regeneration in a TCG guest takes ~87 s instead of ~795 s, see
# measured in this project's VMs). Written after the packages are in: dep needs a root device to look
# at, and mmdebstrap's chroot has none ("mkinitramfs: failed to determine device for /"), so the
# first image is built with Debian's default MODULES=most.
_MODULES_DEP = (
    'mkdir -p "$1/etc/initramfs-tools/conf.d" && '
    'printf "# esp-mirror test root: only the modules this machine needs\\nMODULES=dep\\n" '
    '> "$1/etc/initramfs-tools/conf.d/espvm-modules.conf"'
)
# No locale or documentation: the roots are for tools, not for people.
_NO_DOCS = (
    'mkdir -p "$1/etc/dpkg/dpkg.cfg.d" && printf "%s\\n" '
    '"path-exclude=/usr/share/doc/*" "path-include=/usr/share/doc/*/copyright" '
    '"path-exclude=/usr/share/man/*" "path-exclude=/usr/share/locale/*" '
    '> "$1/etc/dpkg/dpkg.cfg.d/espvm-nodoc"'
)


@dataclass(frozen=True)
class RootSpec:
    """What goes into one kind of target root."""

    name: str
    packages: tuple[str, ...]
    customize_hooks: tuple[str, ...] = ()
    suite: str = SUITE  # bookworm (Debian 12) or trixie (Debian 13)

    def key(self, sources: str) -> str:
        """A short hash of everything that decides the root's content."""
        recipe = {
            "version": _BUILD_VERSION,
            "suite": self.suite,
            "packages": sorted(self.packages),
            "hooks": [_NO_DOCS, *self.customize_hooks],
            "sources": sources,
        }
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


INITRAMFS_TOOLS = RootSpec(
    "initramfs-tools",
    # grub-efi-amd64: the package whose postinst runs grub-install on upgrades; shim-signed and
    # grub-efi-amd64-signed: the chain Debian's installer sets up for Secure Boot (the kernel is
    # signed already); python3 and mtools: what the esp-mirror apply puts on the installed system
    # runs with (its check reads members)
    (
        *COMMON_PACKAGES,
        "initramfs-tools",
        "grub-efi-amd64",
        "grub-efi-amd64-bin",
        "grub-efi-amd64-signed",
        "shim-signed",
        "mokutil",
        "grub2-common",
        "systemd-boot",
        "python3",
        "mtools",
    ),
    customize_hooks=(_MODULES_DEP,),
)
# python3: the installed esp-mirror runs with it, and the profiles whose weekly check is
# esp-mirror's own (opensuse, void) refuse a target without it
DRACUT = RootSpec("dracut", (*COMMON_PACKAGES, "dracut", "python3"))
# Debian 13, as its installer sets up a server with Secure Boot: the signed chain shim -> GRUB, and
# systemd-boot signed by Debian (the pair Debian 13 uses for Secure Boot with systemd-boot), which
# the installed-system tests move to
# A second kernel for the installed system to install with apt (its cloud flavour, from the same
# mirror): /root/linux-image-<version>-cloud-amd64_*.deb
_SECOND_KERNEL = (
    'chroot "$1" sh -c \'cd /root && kver=$(ls /lib/modules) && '
    'apt-get download "linux-image-${kver%-amd64}-cloud-amd64" >/dev/null\''
)
TRIXIE = RootSpec(
    "trixie",
    (*INITRAMFS_TOOLS.packages, "systemd-boot-efi-amd64-signed"),
    customize_hooks=(*INITRAMFS_TOOLS.customize_hooks, _SECOND_KERNEL),
    suite="trixie",
)
SPECS = {spec.name: spec for spec in (INITRAMFS_TOOLS, DRACUT, TRIXIE)}


@dataclass(frozen=True)
class Root:
    """A built root in the cache."""

    name: str
    path: Path
    kver: str  # the kernel under lib/modules
    build_seconds: float  # how long mmdebstrap took when this root was built
    built_now: bool  # False when it came from the cache

    @property
    def initrd(self) -> Path:
        return self.path / "boot" / f"initrd.img-{self.kver}"


def debian_sources(suite: str = SUITE, etc: Path = Path("/etc/apt")) -> str:
    """The machine's enabled apt sources for ``suite`` (and its -updates/-security), as deb822 text.

    Entries for other suites or other repositories (third-party .list files) are left out. A suite
    the machine has no entry for (Debian 13 on a Debian 12 host) comes from the same mirrors: the
    entries of the machine's own release (:data:`SUITE`) with the suite names changed.
    """
    if suite != SUITE:
        try:
            return _stanzas(suite, etc)
        except CommandError:
            own = _stanzas(SUITE, etc)
            return re.sub(rf"\b{SUITE}(?=[-\s])", suite, own)
    return _stanzas(suite, etc)


def _stanzas(suite: str, etc: Path) -> str:
    stanzas: list[str] = []
    files = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.name.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields = _deb822(stanza)
                suites = fields.get("Suites", "").split()
                if (
                    "deb" in fields.get("Types", "").split()
                    and fields.get("Enabled", "yes") != "no"
                    and any(s == suite or s.startswith(f"{suite}-") for s in suites)
                ):
                    stanzas.append(_stanza({**fields, "Types": "deb"}))
        elif path.name == "sources.list" or path.name.endswith(".list"):
            for line in text.splitlines():
                words = line.split("#", 1)[0].split()
                if words[:1] != ["deb"]:
                    continue
                options, rest = ([], words[1:])
                if rest and rest[0].startswith("["):
                    end = next(i for i, w in enumerate(rest) if w.endswith("]"))
                    options, rest = rest[: end + 1], rest[end + 1 :]
                if len(rest) >= 3 and (rest[1] == suite or rest[1].startswith(f"{suite}-")):
                    fields = {"Types": "deb", "URIs": rest[0], "Suites": rest[1], "Components": " ".join(rest[2:])}
                    for option in " ".join(options).strip("[] ").split():
                        key, _, value = option.partition("=")
                        if key == "signed-by":
                            fields["Signed-By"] = value
                    stanzas.append(_stanza(fields))
    if not stanzas:
        raise CommandError(
            f"no enabled apt source for Debian {suite} in {etc}/sources.list*: the target "
            "roots are built from the machine's own apt mirror; add one"
        )
    return "\n".join(stanzas)


def _deb822(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = ""
    for line in stanza.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] in " \t" and key:
            fields[key] += "\n" + line
            continue
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _stanza(fields: dict[str, str]) -> str:
    return "".join(f"{k}: {v}\n" for k, v in fields.items())


def cache_dir() -> Path:
    return default_cache_dir() / "roots"


def ensure_root(spec: RootSpec, cache: Path | None = None) -> Root:
    """Return the cached root for ``spec``, building it first when it is not there yet."""
    sources = debian_sources(spec.suite)
    cache = cache or cache_dir()
    path = cache / f"{spec.name}-{spec.key(sources)}"
    with cache_lock(cache, f"root-{spec.name}"):
        if not (path / _STAMP).is_file():
            _build(spec, sources, path)
    stamp = json.loads((path / _STAMP).read_text())
    return Root(spec.name, path, stamp["kver"], stamp["seconds"], stamp.get("built_at") == _THIS_RUN)


_THIS_RUN = f"{os.getpid()}-{time.time()}"


def _build(spec: RootSpec, sources: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f"{spec.name}-*"):  # older recipes of this kind, and what was made of them
        if stale != path and re.fullmatch(rf"{re.escape(spec.name)}-[0-9a-f]{{12}}(\.[\w.-]+)?", stale.name):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    with tempfile.TemporaryDirectory(prefix=f".build-{spec.name}-", dir=path.parent) as tmp:
        staging = Path(tmp) / "root"
        sources_file = Path(tmp) / "debian.sources"
        sources_file.write_text(sources)
        argv = [
            "mmdebstrap",
            "--mode=root",
            "--variant=minbase",
            "--format=directory",
            f"--include={','.join(spec.packages)}",
            # the machine's own apt settings for an archive snapshot whose Release files are old
            '--aptopt=Acquire::Check-Valid-Until "false"',
            '--aptopt=Acquire::Check-Date "false"',
            f"--essential-hook={_NO_DOCS}",
            *(f"--customize-hook={hook}" for hook in spec.customize_hooks),
            spec.suite,
            str(staging),
            str(sources_file),
        ]
        started = time.monotonic()
        log = path.parent / f"{spec.name}.build.log"
        with log.open("wb") as out:
            proc = subprocess.run(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={"PATH": HOST_PATH, "LANG": "C.UTF-8"},
                check=False,
            )
        if proc.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
            raise CommandError(
                f"mmdebstrap for the {spec.name} root exited {proc.returncode} (full log: {log}):\n{tail}"
            )
        seconds = time.monotonic() - started
        kernels = sorted(p.name for p in (staging / "lib" / "modules").iterdir() if p.is_dir())
        if len(kernels) != 1:
            raise CommandError(f"the {spec.name} root has kernels {kernels}, expected exactly one")
        stamp = {
            "name": spec.name,
            "kver": kernels[0],
            "seconds": round(seconds, 1),
            "built_at": _THIS_RUN,
            "packages": list(spec.packages),
        }
        (staging / _STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
        staging.rename(path)


@contextlib.contextmanager
def writable_view(root: Root | Path, workdir: Path) -> Iterator[Path]:
    """Mount an overlay over a cached root: writes go to ``workdir``, the cache stays as built."""
    lower = root.path if isinstance(root, Root) else root
    upper, work, merged = (workdir / n for n in ("upper", "work", "merged"))
    for d in (upper, work, merged):
        d.mkdir(parents=True, exist_ok=True)
    run_command(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)]
    )
    try:
        yield merged
    finally:
        _unmount(merged)


@contextlib.contextmanager
def chroot_mounts(root: Path) -> Iterator[Path]:
    """Bind /proc, /sys and /dev into ``root`` (as an installer does before running in-target tools)."""
    done: list[Path] = []
    try:
        for fs in ("proc", "sys", "dev"):
            where = root / fs
            where.mkdir(exist_ok=True)
            run_command(["mount", "--bind", f"/{fs}", str(where)])
            done.append(where)
        yield root
    finally:
        for where in reversed(done):
            _unmount(where)


def _unmount(where: Path) -> None:
    """Unmount ``where`` after stopping what still runs inside the view (a tool run in the chroot
    can leave a child behind that holds /proc: "target is busy" failed a test's teardown once);
    what stays busy anyway is detached lazily, so one test cannot fail the next."""
    view = str(where.parent if where.name in ("proc", "sys", "dev") else where)
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            rooted = os.readlink(f"/proc/{pid}/root")
        except OSError:
            continue
        if rooted == view or rooted.startswith(view + "/"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode != 0:
        run_command(["umount", "--lazy", str(where)])


def main() -> int:
    """Build (or find) every root and print where it is and how long its build took."""
    for spec in SPECS.values():
        root = ensure_root(spec)
        how = "built now" if root.built_now else "from the cache"
        print(f"{spec.name:16} {root.path}  kernel {root.kver}  mmdebstrap {root.build_seconds:.0f} s ({how})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
