"""Closed sets of choices, as StrEnums with the predicates callers need. Plain names only, at the
bottom of pipeline/: what a bootloader kind means is its row in
:mod:`esp_mirror_plugin.pipeline.bootloaders`."""

from enum import StrEnum


class Generator(StrEnum):
    """The initramfs generator a distribution uses."""

    INITRAMFS_TOOLS = "initramfs-tools"
    DRACUT = "dracut"
    MKINITCPIO = "mkinitcpio"
    MKINITFS = "mkinitfs"


class InitramfsMode(StrEnum):
    REGENERATE = "regenerate"  # write the generator settings and rebuild the images once
    CONFIGURE_ONLY = "configure-only"  # write the settings; an image pipeline rebuilds later
    SKIP = "skip"  # touch neither

    @property
    def configures(self) -> bool:
        return self is not InitramfsMode.SKIP

    @property
    def regenerates(self) -> bool:
        return self is InitramfsMode.REGENERATE


class OwnCheck(StrEnum):
    """Whether esp-mirror's weekly `esp-mirror check` runs md's check too, and how it is scheduled.

    Every profile gets a weekly esp-mirror run: it compares the members' files and writes the
    metrics (``metrics_dir``). Where the distribution ships an md check of its own (mdcheck,
    raid-check, checkarray: the profile's periodic_check), that one does md's part: NONE.
    Elsewhere esp-mirror's run starts md's check as well, scheduled as the value says. The
    refresh of the metrics (`esp-mirror status --metrics-dir`) is scheduled the same way, more
    often (hooks/periodic.py).
    """

    # the distribution's md check runs (periodic_check); esp-mirror-check.timer runs
    # `check --no-md-check` (systemd only: with another init nothing runs weekly and nothing refreshes the
    # metrics, and the plan says so)
    NONE = "none"
    # esp-mirror-check.timer, weekly; output in the journal. Metrics: esp-mirror-metrics.timer, 5 min
    SYSTEMD_TIMER = "systemd-timer"
    # /etc/cron.weekly/esp-mirror-check; output to syslog. Metrics: /etc/cron.hourly/esp-mirror-metrics
    CRON_WEEKLY = "cron-weekly"
    # Alpine's /etc/periodic/weekly/esp-mirror-check. Metrics: /etc/periodic/15min/esp-mirror-metrics
    PERIODIC_WEEKLY = "periodic-weekly"


class Init(StrEnum):
    """The installed system's init: where esp-mirror's units, scripts and settings go."""

    SYSTEMD = "systemd"  # units, drop-ins, udev rules with SYSTEMD_WANTS
    OPENRC = "openrc"  # /etc/local.d scripts run by the "local" service
    RUNIT = "runit"  # /etc/rc.local, run by Void's runit core services at boot


class BootloaderKind(StrEnum):
    """What ends up on the ESP and which file the boot entries start. Each kind's row, everything
    esp-mirror does differently for it, is in :mod:`esp_mirror_plugin.pipeline.bootloaders`."""

    EFI = "efi"  # any EFI binary given by path (a unified kernel image, a ZFSBootMenu image, ...)
    ZFSBOOTMENU = "zfsbootmenu"  # a ZFSBootMenu image in the conventional \EFI\ZBM\ layout
    SYSTEMD_BOOT = "systemd-boot"
    GRUB = "grub"


class EspFrom(StrEnum):
    """Where a member's ESP partition comes from (:mod:`esp_mirror_plugin.pipeline.members` decides)."""

    MADE = "made"  # partition 1 added in the free space at the ESP's start (a blank or --wipe'd disk too)
    TAKEN = "taken"  # an ESP partition that holds nothing (or a FAT without files), taken where it is
    MEMBER = "member"  # a member of the mirror's array already (a run again)
    ADOPTED = "adopted"  # adopt: another disk's ESP with files, kept in the backup, then made a member
    LIVE = "live"  # adopt: the ESP the system runs from; it joins the array last
    COPIED = "copied"  # replace --copy-table: the survivor's partition table, with new GUIDs

    @property
    def exists(self) -> bool:
        """The partition is in the disk's table before esp-mirror runs."""
        return self not in (EspFrom.MADE, EspFrom.COPIED)


class AdoptPhase(StrEnum):
    """How far an adoption got (:mod:`esp_mirror_plugin.pipeline.adoption`)."""

    NEW = "new"  # nothing changed yet
    COPY = "copy"  # the array is not the ESP yet: a run again makes and fills it again
    SWITCHED = "switched"  # the array is the ESP: a run again goes on from there
