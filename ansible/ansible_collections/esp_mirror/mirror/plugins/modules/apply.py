#!/usr/bin/python
# Copyright: esp-mirror contributors
# MIT License (see the repository's pyproject.toml)
"""esp_mirror.mirror.apply: run ``esp-mirror apply`` (``esp-mirror plan`` in check mode)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: apply
short_description: Mirror the EFI System Partition on every disk with esp-mirror
description:
  - Runs the esp-mirror program installed on the managed host, C(esp-mirror apply --yes --json),
    which puts an ESP partition on every disk, mirrors them with md RAID1 (metadata 1.0), records
    the array in the target's mdadm.conf and fstab, installs the bootloader on it and makes one
    firmware boot entry per disk.
  - The options are esp-mirror's settings, one for each option of C(esp-mirror apply) (and
    O(esp_start), a config file key). An option left out takes esp-mirror's own default.
  - In check mode it runs C(esp-mirror plan --json) instead, which changes nothing and tells for
    every step whether apply would change something; C(changed) then says whether apply would
    (or might, when a step that only running it can tell about is in the plan, such as attaching
    an image file).
  - C(changed) is whether apply changed anything (steps that found their work done count as
    unchanged). O(bootloader=grub) or O(bootloader=systemd-boot) run their installer each time, so
    such runs always report C(changed). The default O(initramfs=regenerate) rebuilds the initramfs
    only when what esp-mirror gives the generator changed since its last rebuild (a stamp in the
    target, C(/var/lib/esp-mirror/initramfs.sha256), holds its sha256), so a second run with
    O(bootloader=efi) or O(bootloader=zfsbootmenu) reports C(changed=false). Disk image files are
    attached and released on every run, which counts too.
  - Bad input (a disk in use, a missing program, a wrong setting) fails the task with esp-mirror's
    one-line error, and nothing is changed (exit 2). So does any other exit code but 0 (1 a failed
    step, 70 an internal error of esp-mirror, 130 interrupted), with esp-mirror's message.
version_added: 0.1.0
author:
  - esp-mirror maintainers (!UNKNOWN)
requirements:
  - esp-mirror on the managed host (an installed system has C(/usr/local/sbin/esp-mirror)).
  - root on the managed host (C(become)); C(plan) run as another user reads what it can and says
    what it could not.
options:
  disks:
    description:
      - a whole disk or a disk image file; repeat for each mirror member
      - One list item per disk, by absolute path (C(/dev/disk/by-id/...) names stay right when disks
        change places).
    type: list
    elements: path
    required: true
  profile:
    description:
      - built-in profile name or path to a YAML profile
      - "esp-mirror's default when left out: debian"
    type: str
  target:
    description:
      - "root of the system being installed (image files need it: they are not this machine's disks)"
      - "esp-mirror's default when left out: /"
    type: path
  esp_size:
    description:
      - size of each ESP partition
      - "esp-mirror's default when left out: 512M"
      - Written as V(512M), V(1G) or a number of MiB.
    type: str
  esp_start:
    description:
      - where the ESP starts on each disk
      - "esp-mirror's default when left out: 1M"
      - A config file key of esp-mirror (no command line option); given here, it is passed in a
        temporary settings file (C(--config)).
    type: str
  mountpoint:
    description:
      - ESP mount point in the target
      - "esp-mirror's default when left out: the profile's"
    type: str
  label:
    description:
      - FAT volume label
      - "esp-mirror's default when left out: ESP"
    type: str
  array_name:
    description:
      - "md array name: /dev/md/NAME, stored as any:NAME"
      - "esp-mirror's default when left out: esp"
    type: str
  metadata:
    description:
      - md metadata version; only 1.0 is accepted
      - "esp-mirror's default when left out: 1.0"
    type: str
  bootloader:
    description:
      - what goes on the ESP
      - "esp-mirror's default when left out: the profile's"
    type: str
    choices: [efi, zfsbootmenu, systemd-boot, grub]
  efi_image:
    description:
      - EFI binary for --bootloader efi or zfsbootmenu
      - An absolute path on the managed host.
    type: path
  loader_id:
    description:
      - 'directory under \EFI\'
      - "esp-mirror's default when left out: the profile's"
    type: str
  entry_label:
    description:
      - boot entry label prefix
      - "esp-mirror's default when left out: the profile's"
    type: str
  no_nvram:
    description:
      - make no firmware boot entries
    type: bool
    default: false
  initramfs:
    description:
      - what to do with the initramfs
      - "esp-mirror's default when left out: regenerate"
    type: str
    choices: [regenerate, configure-only, skip]
  wipe:
    description:
      - erase the whole disks first (every partition on them; refused while one is in use)
    type: bool
    default: false
  degraded:
    description:
      - allow a one-disk mirror
    type: bool
    default: false
  metrics_dir:
    description:
      - "the installed system's node_exporter textfile directory: the weekly check writes
        esp_mirror.prom there when it exists"
      - "esp-mirror's default when left out: /var/lib/prometheus/node-exporter"
      - An absolute path in the installed system (not relative to where the module runs).
    type: str
extends_documentation_fragment:
  - esp_mirror.mirror.executable
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: C(esp-mirror plan --json) decides, with the same check apply makes before each step.
  diff_mode:
    support: full
    details: The diff is the plan, as C(esp-mirror plan) prints it (every command and file write).
  platform:
    platforms: posix
notes:
  - esp-mirror runs as it would on the command line; its lock (C(/run/lock/esp-mirror.lock)) makes
    a second run wait for the first.
seealso:
  - module: esp_mirror.mirror.info
  - module: esp_mirror.mirror.member
"""

EXAMPLES = r"""
- name: Mirror the ESP on both disks of a Debian system
  esp_mirror.mirror.apply:
    disks:
      - /dev/disk/by-id/ata-WDC_WD10EZEX_WD-WCC4N0AAAAAA
      - /dev/disk/by-id/ata-WDC_WD10EZEX_WD-WCC4N0BBBBBB
    bootloader: grub
  become: true

- name: An image build, no NVRAM, the initramfs only configured
  esp_mirror.mirror.apply:
    disks: [/srv/build/disk-a.img, /srv/build/disk-b.img]
    target: /mnt/image-root
    bootloader: efi
    efi_image: /srv/build/uki.efi
    initramfs: configure-only
  become: true

- name: See what apply would do, and whether it would change anything
  esp_mirror.mirror.apply:
    disks: [/dev/sda, /dev/sdb]
  check_mode: true
  diff: true
  register: esp_plan
"""

RETURN = r"""
plan:
  description:
    - The plan's groups (setup, one per hook, cleanup), each with its steps as C(esp-mirror plan --json)
      shows them; every step has C(would_change) (true, false, or null when only running it can tell),
      told before the first step ran.
  returned: success
  type: list
  elements: dict
would_change:
  description: How many steps of the plan would change something, told before the first step ran.
  returned: success
  type: int
  sample: 3
undecided:
  description: How many steps of the plan only running them can tell about (loop devices of image files).
  returned: success
  type: int
  sample: 0
digest:
  description: The plan's digest (C(esp-mirror apply --expect-plan) takes it).
  returned: success
  type: str
report:
  description:
    - esp-mirror's JSON report. In check mode the plan (C(esp-mirror plan --json)); else apply's
      (C(esp-mirror apply --json)), which also has C(changed) and C(done) (steps changed and carried
      out) and C(steps), what each step did.
  returned: success
  type: dict
stdout_lines:
  description: What esp-mirror showed a person, by line. Check mode the plan text; else apply's progress lines.
  returned: success
  type: list
  elements: str
rc:
  description: esp-mirror's exit code.
  returned: always
  type: int
  sample: 0
cmd:
  description: The command line that ran.
  returned: always
  type: list
  elements: str
"""

import json
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.esp_mirror.mirror.plugins.module_utils.runner import executable, report

# esp-mirror's settings table (esp_mirror_plugin/pipeline/request.py), in its order: the option
# name and how the command line spells it (None: a config file key only). The repository's
# tests/unit/test_ansible_modules.py checks these against the table, so they cannot drift.
SETTINGS = (
    ("disks", "--disk"),
    ("profile", "--profile"),
    ("target", "--target"),
    ("esp_size", "--esp-size"),
    ("esp_start", None),
    ("mountpoint", "--mountpoint"),
    ("label", "--label"),
    ("array_name", "--array-name"),
    ("metadata", "--metadata"),
    ("bootloader", "--bootloader"),
    ("efi_image", "--efi-image"),
    ("loader_id", "--loader-id"),
    ("entry_label", "--entry-label"),
    ("no_nvram", "--no-nvram"),
    ("initramfs", "--initramfs"),
    ("wipe", "--wipe"),
    ("degraded", "--degraded"),
    ("metrics_dir", "--metrics-dir"),
)
PATHS = ("disks", "target", "efi_image")  # relative to where the module runs, they would name the wrong file

ARGUMENT_SPEC = dict(
    disks=dict(type="list", elements="path", required=True),
    profile=dict(type="str"),
    target=dict(type="path"),
    esp_size=dict(type="str"),
    esp_start=dict(type="str"),
    mountpoint=dict(type="str"),
    label=dict(type="str"),
    array_name=dict(type="str"),
    metadata=dict(type="str"),
    bootloader=dict(type="str", choices=["efi", "zfsbootmenu", "systemd-boot", "grub"]),
    efi_image=dict(type="path"),
    loader_id=dict(type="str"),
    entry_label=dict(type="str"),
    no_nvram=dict(type="bool", default=False),
    initramfs=dict(type="str", choices=["regenerate", "configure-only", "skip"]),
    wipe=dict(type="bool", default=False),
    degraded=dict(type="bool", default=False),
    metrics_dir=dict(type="str"),
    executable=dict(type="path"),
)


def settings_argv(params):
    """The command line options of the given settings, and the settings that only a config file takes."""
    argv, config = [], {}
    for name, option in SETTINGS:
        value = params[name]
        if value is None or value is False:
            continue
        if option is None:
            config[name] = value
        elif value is True:
            argv.append(option)
        elif isinstance(value, list):
            for item in value:
                argv += [option, item]
        else:
            argv += [option, value]
    return argv, config


def relative_paths(params):
    given = [(name, params[name]) for name in PATHS if params[name] is not None]
    return [
        f"{name}: {path}"
        for name, value in given
        for path in (value if isinstance(value, list) else [value])
        if not os.path.isabs(path)
    ]


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    relative = relative_paths(module.params)
    if relative:
        module.fail_json(msg=f"give absolute paths (the module runs in a temporary directory): {', '.join(relative)}")
    options, config = settings_argv(module.params)
    command = ["plan", "--json"] if module.check_mode else ["apply", "--yes", "--json"]
    settings_file = None
    if config:  # JSON is YAML: esp-mirror reads it as a settings file
        handle, settings_file = tempfile.mkstemp(prefix="esp-mirror-", suffix=".yaml", dir=module.tmpdir)
        with os.fdopen(handle, "w") as out:
            json.dump(config, out)
        options += ["--config", settings_file]
    argv = [executable(module), *command, *options]
    try:
        rc, data = report(module, argv)
    finally:
        if settings_file is not None:
            os.unlink(settings_file)

    if module.check_mode:
        changed = data["would_change"] > 0 or data["undecided"] > 0
        lines = data["text"].splitlines()
    else:
        changed = data["changed"] > 0
        lines = data["log"]
    result = dict(
        changed=changed,
        plan=data["groups"],
        would_change=data["would_change"],
        undecided=data["undecided"],
        digest=data["digest"],
        report=data,
        stdout_lines=lines,
        rc=rc,
        cmd=argv,
    )
    if data.get("unverified"):
        module.warn(f"esp-mirror could not read {'; '.join(data['unverified'])}: run the task as root (become)")
    if module._diff:
        result["diff"] = dict(before="", after=data["text"], before_header="(nothing)", after_header="esp-mirror plan")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
