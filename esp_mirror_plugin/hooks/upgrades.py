"""Settings that package upgrades read when they touch the ESP on their own, long after install.

- debconf (Debian, Ubuntu): grub-efi-amd64, shim-signed and shim-helpers-amd64-signed run
  ``grub-install`` from their maintainer scripts. The profile's answers make it leave NVRAM alone
  (``grub2/update_nvram``: esp-mirror keeps one entry per disk, grub-install would collapse them
  and call efibootmgr for the md device) and refresh ``\\EFI\\BOOT\\BOOTX64.EFI``
  (``grub2/force_efi_extra_removable``). They are kept in /etc/esp-mirror/debconf.preseed and
  loaded with ``debconf-set-selections``; the packages' scripts only read them.
- bootctl refuses an ESP on md unless ``SYSTEMD_RELAX_ESP_CHECKS=1`` is in its environment
  (systemd's docs/ENVIRONMENT.md). Debian's kernel hook ``zz-systemd-boot`` runs ``bootctl
  is-installed`` and silently skips ``kernel-install`` when that fails;
  systemd-boot-update.service runs ``bootctl update`` at boot. So the variable goes where each of
  them gets its environment: a drop-in for that unit, systemd's DefaultEnvironment (services
  such as unattended-upgrades) and /etc/environment (pam_env: logins, sudo, ssh).
- fwupd does not find an ESP on md, or mounts a member (fwupd #3036, #5042, #7045, #7298): it is
  told the mount point: ``EspLocation`` in /etc/fwupd/fwupd.conf (fwupd 1.9 and later) or
  /etc/fwupd/daemon.conf (1.8.5 and later), ``OverrideESPMountPoint`` in uefi_capsule.conf
  (up to 1.8.4; later 1.8 releases migrate it).
"""

from __future__ import annotations

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.pipeline.bootloaders import spec
from esp_mirror_plugin.pipeline.kinds import BootloaderKind, Init
from esp_mirror_plugin.pipeline.profiles import Profile
from esp_mirror_plugin.pipeline.steps import Command, EditBlock, LoadDebconf, RemoveBlock, Step, WriteFile
from esp_mirror_plugin.system import files
from esp_mirror_plugin.system.target import Target

PRESEED = "/etc/esp-mirror/debconf.preseed"
DEBCONF_DB = "var/cache/debconf"
RELAX = "SYSTEMD_RELAX_ESP_CHECKS"
SYSTEM_CONF_DROPIN = "etc/systemd/system.conf.d/90-esp-mirror.conf"  # systemd's DefaultEnvironment
BOOT_UPDATE_DROPIN = "etc/systemd/system/systemd-boot-update.service.d/90-esp-mirror.conf"

# (file, section, key) fwupd reads the ESP's mount point from, by the files its version ships
FWUPD_19 = (("etc/fwupd/fwupd.conf", "fwupd", "EspLocation"),)
FWUPD_18 = (
    ("etc/fwupd/daemon.conf", "fwupd", "EspLocation"),
    ("etc/fwupd/uefi_capsule.conf", "uefi_capsule", "OverrideESPMountPoint"),
)


def debconf_lines(profile: Profile, array_uuid: str) -> str:
    """The preseed file: one ``owner question type value`` line per answer."""
    lines = [f"{question} {answer.replace('{array_uuid}', array_uuid)}" for question, answer in profile.debconf.items()]
    return (
        "# esp-mirror: answers for the GRUB and shim packages' maintainer scripts, so that an upgrade\n"
        "# installs onto the mirrored ESP without touching NVRAM and refreshes the fallback path.\n"
        "# Loaded with debconf-set-selections by esp-mirror apply and refresh.\n" + "".join(f"{x}\n" for x in lines)
    )


def _debconf(
    profile: Profile, target: Target, array_uuid: str, esp_mirror: bool
) -> tuple[tuple[Step, ...], tuple[str, ...]]:
    """The preseed file, loaded into the target's debconf database; a target without debconf yet
    (an image root before its packages) gets the file and a note: `esp-mirror refresh` loads it
    (``esp_mirror``: esp-mirror is put on the installed system), else debconf-set-selections."""
    if not profile.debconf:
        return (), ()
    why = "package upgrades run grub-install onto the array: no NVRAM change, fallback path refreshed"
    preseed = WriteFile(target.path(PRESEED), debconf_lines(profile, array_uuid), why=why, root=target.root)
    if not target.has_program("debconf-set-selections"):
        loader = (
            f"`esp-mirror refresh` there (or `debconf-set-selections {PRESEED}`)"
            if esp_mirror
            else f"`debconf-set-selections {PRESEED}` there"
        )
        return (preseed,), (
            f"debconf is not in the target yet: {PRESEED} is written but not loaded; once the packages are "
            f"installed, run {loader} before the first GRUB or shim upgrade",
        )
    problem = target.writable(DEBCONF_DB) if target.exists(DEBCONF_DB) else None
    if problem:
        raise BadInput(
            f"the debconf database {target.path(DEBCONF_DB)} cannot be written: {problem}; "
            "make it writable (remount read-write, finish or kill a running apt/dpkg) and run again"
        )
    answers = tuple(
        (question.split()[1], answer.replace("{array_uuid}", array_uuid).split(" ", 1)[1])
        for question, answer in profile.debconf.items()
    )
    load = LoadDebconf(
        Command(("debconf-set-selections", PRESEED), root=target.root, why=why),
        answers,
        str(target.path(DEBCONF_DB + "/config.dat")),
        why=why,
    )
    return (preseed, load), ()


def _relaxed_esp_checks(profile: Profile, target: Target, bootloader: BootloaderKind) -> tuple[Step, ...]:
    if not spec(bootloader).bootctl and not target.has_program("bootctl"):
        return ()
    why = f"bootctl accepts the ESP on md only with {RELAX}=1"
    steps: list[Step] = [
        EditBlock(target.path("etc/environment"), f"{RELAX}=1", why=why + " (logins, sudo: pam_env)", root=target.root)
    ]
    if profile.init is Init.SYSTEMD:
        steps += [
            WriteFile(
                target.path(SYSTEM_CONF_DROPIN),
                f"# esp-mirror: {why}\n[Manager]\nDefaultEnvironment={RELAX}=1\n",
                why=why + " (services such as unattended-upgrades)",
                root=target.root,
            ),
            WriteFile(
                target.path(BOOT_UPDATE_DROPIN),
                f"# esp-mirror: {why}\n[Service]\nEnvironment={RELAX}=1\n",
                why=why + " (bootctl update at boot)",
                root=target.root,
            ),
        ]
    return tuple(steps)


def fwupd_files(target: Target) -> tuple[tuple[str, str, str], ...]:
    """(file, section, key) to set for the fwupd the target has; () when it has none."""
    if target.exists(FWUPD_19[0][0]):
        return FWUPD_19
    if target.exists(FWUPD_18[0][0]):
        return tuple(entry for entry in FWUPD_18 if target.exists(entry[0]))
    return ()


def _set_outside_block(text: str, section: str, key: str, shown: str) -> str | None:
    """The value ``key`` has in ``[section]`` outside esp-mirror's block, or None."""
    try:
        rest = files.without_block(text)
    except ValueError as exc:
        raise BadInput(f"{shown} {exc}") from None
    import configparser  # only where fwupd is installed: plan loads no more than it needs

    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # fwupd's keys are case-sensitive
    try:
        parser.read_string(rest)
    except configparser.Error as exc:
        raise BadInput(f"{shown} is not an INI file fwupd can read ({exc.message.splitlines()[0]}): fix it") from None
    return parser.get(section, key, fallback=None)


def _fwupd(target: Target, mountpoint: str, esp_mirror: bool) -> tuple[tuple[Step, ...], tuple[str, ...]]:
    found = fwupd_files(target)
    if not found and esp_mirror:
        return (), (
            "fwupd is not installed: if it is installed later, run `esp-mirror refresh` so it "
            f"finds the ESP at {mountpoint} (status and check report it until then)",
        )
    if not found:
        return (), (
            "fwupd is not installed: if it is installed later, run this apply again (esp-mirror is not on the "
            f"installed system to do it) so it finds the ESP at {mountpoint}",
        )
    steps: list[Step] = []
    for rel, section, key in found:
        shown = target.path(rel)
        value = _set_outside_block(target.text(rel), section, key, shown)
        if value is not None and value != mountpoint:
            raise BadInput(
                f"{shown} sets {key}={value} in [{section}], not the mirrored ESP {mountpoint}: "
                f"remove that line (esp-mirror sets {key}) or mount the ESP there"
            )
        if value is None:
            steps.append(
                EditBlock(
                    shown,
                    f"[{section}]\n{key}={mountpoint}",
                    why="fwupd writes capsules to the array, never to one member",
                    root=target.root,
                )
            )
    return tuple(steps), ()


def _grub_distributor(profile: Profile, bootloader: BootloaderKind, loader_id: str) -> tuple[str, ...]:
    """Debian's GRUB postinst installs into \\EFI\\<GRUB_DISTRIBUTOR>\\, and only when that exists."""
    if not profile.debconf or not spec(bootloader).distributor or loader_id == profile.loader_id:
        return ()
    return (
        f"--loader-id {loader_id}: the GRUB packages' upgrades install into \\EFI\\{profile.loader_id}\\ "
        f"(GRUB_DISTRIBUTOR), and only when it exists, never into \\EFI\\{loader_id}\\ which the boot "
        f"entries start; set GRUB_DISTRIBUTOR={loader_id} in /etc/default/grub so upgrades update it",
    )


def plan(
    profile: Profile,
    target: Target,
    array_uuid: str,
    mountpoint: str,
    bootloader: BootloaderKind,
    loader_id: str,
    esp_mirror: bool = True,
) -> tuple[tuple[Step, ...], tuple[str, ...]]:
    """The steps and notes of this module; ``esp_mirror``: esp-mirror is put on the installed
    system (:func:`esp_mirror_plugin.hooks.installed.puts_esp_mirror`), so a note may tell to run
    it there."""
    debconf_steps, notes = _debconf(profile, target, array_uuid, esp_mirror)
    fwupd_steps, fwupd_notes = _fwupd(target, mountpoint, esp_mirror)
    notes += fwupd_notes + _grub_distributor(profile, bootloader, loader_id)
    return debconf_steps + _relaxed_esp_checks(profile, target, bootloader) + fwupd_steps, notes


def removal(profile: Profile, target: Target, device: str) -> tuple[tuple[Step, ...], tuple[str, ...]]:
    """What :func:`plan` set, taken back (``esp-mirror release --all``), as (steps, notes): the
    relaxed ESP checks (a plain ESP needs none) and fwupd's ESP setting (fwupd finds a plain ESP
    itself) go. Of the debconf answers, those that name the array are answered again for
    ``device``, the partition that is the ESP now (Ubuntu's install_devices, which would else
    name a device that no longer exists when GRUB's package is upgraded); the others stay, and
    mean on a plain ESP what they meant on the mirror (no NVRAM writes, a current fallback path).
    The preseed file goes. Only what is there is planned."""
    steps: list[Step] = []
    notes: list[str] = []
    why = "a plain ESP needs no relaxed ESP checks from bootctl"
    if target.has_block("etc/environment"):
        steps.append(
            RemoveBlock(target.path("etc/environment"), why=why + " (logins, sudo: pam_env)", root=target.root)
        )
    drop_ins = (SYSTEM_CONF_DROPIN, BOOT_UPDATE_DROPIN)
    steps += [Command(("rm", "-f", "--", p), why=why) for p in target.present(*drop_ins)]
    for rel, _section, _key in FWUPD_19 + FWUPD_18:
        if target.has_block(rel):
            steps.append(RemoveBlock(target.path(rel), why="fwupd finds a plain ESP by itself", root=target.root))
    # owner and question -> the answer's type, for the answers that name the array
    naming_array = {q: a.split(" ", 1)[0] for q, a in profile.debconf.items() if "{array_uuid}" in a}
    why = "the GRUB packages' upgrades install onto the ESP that is left, not onto the array that is gone"
    answers = tuple((q.split()[1], device) for q in naming_array)
    database = target.resolve(DEBCONF_DB + "/config.dat")
    held = files.debconf_values(database.read_text(errors="replace")) if database.is_file() else {}
    if all(held.get(question) == value for question, value in answers):
        naming_array = {}  # answered so already: a release run again
    if naming_array and target.has_program("debconf-set-selections"):
        text = "# esp-mirror release: the answers that named the array, for the ESP that is left.\n" + "".join(
            f"{q} {kind} {device}\n" for q, kind in naming_array.items()
        )
        steps.append(WriteFile(target.path(PRESEED), text, why=why, root=target.root))
        steps.append(
            LoadDebconf(
                Command(("debconf-set-selections", PRESEED), root=target.root, why=why),
                answers,
                str(target.path(DEBCONF_DB + "/config.dat")),
                why=why,
            )
        )
    elif naming_array:
        notes.append(
            f"debconf is not in the target: answer {', '.join(q.split()[1] for q in naming_array)} with {device} "
            "(`debconf-set-selections`) before the next GRUB upgrade"
        )
    preseed = (target.path(PRESEED),) if any(isinstance(s, WriteFile) for s in steps) else target.present(PRESEED)
    why = "esp-mirror's debconf answers are loaded; the file was only their source"
    steps += [Command(("rm", "-f", "--", p), why=why) for p in preseed]
    return tuple(steps), tuple(notes)
