#!/usr/bin/python
# Copyright: esp-mirror contributors
# MIT License (see the repository's pyproject.toml)
"""esp_mirror.mirror.member: ``esp-mirror replace`` and ``esp-mirror add``."""

from __future__ import annotations

DOCUMENTATION = r"""
module: member
short_description: Replace a member of the mirrored EFI System Partition, or add one
description:
  - O(state=replaced) runs C(esp-mirror replace --old OLD --new NEW), O(state=added) runs
    C(esp-mirror add --disk DISK) on the managed host. Either partitions the new disk like the
    others (fresh partition GUIDs), adds it to the array, waits for the recovery and makes its
    firmware boot entry (replace also takes the old member out and drops its entry).
  - It first runs the same command with C(--dry-run --json), which changes nothing. When that
    plan has nothing to do (the new disk is an in-sync member already and every member has its
    boot entry), the task reports C(changed=false) and runs nothing else. In check mode the
    dry run is all that runs.
  - A disk that is in use, too small, or not a member fails the task with esp-mirror's one-line
    error, and nothing is changed (exit 2). So does any other exit code but 0 (1 a failed step, 70
    an internal error of esp-mirror, 130 interrupted), with esp-mirror's message.
version_added: 0.1.0
author:
  - esp-mirror maintainers (!UNKNOWN)
requirements:
  - esp-mirror on the managed host (an installed system has C(/usr/local/sbin/esp-mirror)), set up by apply.
  - root on the managed host (C(become)).
options:
  state:
    description:
      - V(replaced) puts O(new) in the place of O(old); V(added) grows the mirror by O(disk).
    type: str
    required: true
    choices: [replaced, added]
  old:
    description:
      - The member to replace (its disk), or V(missing) for one that is gone.
      - Required with O(state=replaced).
    type: str
  new:
    description:
      - The new (blank) disk that replaces O(old).
      - Required with O(state=replaced).
    type: path
  disk:
    description:
      - The new (blank) disk that joins the mirror.
      - Required with O(state=added).
    type: path
  wipe:
    description:
      - Erase an existing partition table on the new disk.
    type: bool
    default: false
extends_documentation_fragment:
  - esp_mirror.mirror.executable
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: C(--dry-run --json) decides, with the same check the run makes before each step.
  diff_mode:
    support: none
  platform:
    platforms: posix
seealso:
  - module: esp_mirror.mirror.info
  - module: esp_mirror.mirror.apply
"""

EXAMPLES = r"""
- name: A disk died; the new one came up as /dev/sdb
  esp_mirror.mirror.member:
    state: replaced
    old: missing
    new: /dev/disk/by-id/ata-WDC_WD10EZEX_WD-WCC4N0CCCCCC
  become: true

- name: Grow the mirror by a third disk that had old partitions
  esp_mirror.mirror.member:
    state: added
    disk: /dev/sdc
    wipe: true
  become: true
"""

RETURN = r"""
plan:
  description:
    - The groups of steps of the command (C(replace) or C(add), then C(entries)), as its
      C(--dry-run --json) shows them; every step has C(would_change).
  returned: success
  type: list
  elements: dict
report:
  description:
    - esp-mirror's JSON report of the command that ran last (the dry run when nothing else ran),
      with C(new), C(old), C(partition_guid), C(applied) and, once applied, C(changed).
  returned: success
  type: dict
rc:
  description: esp-mirror's exit code.
  returned: always
  type: int
  sample: 0
cmd:
  description: The command line that ran last.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.esp_mirror.mirror.plugins.module_utils.runner import executable, report

ARGUMENT_SPEC = dict(
    state=dict(type="str", required=True, choices=["replaced", "added"]),
    old=dict(type="str"),
    new=dict(type="path"),
    disk=dict(type="path"),
    wipe=dict(type="bool", default=False),
    executable=dict(type="path"),
)


def command(params):
    """The esp-mirror command line (without the program) for ``state``."""
    if params["state"] == "replaced":
        argv = ["replace", "--old", params["old"], "--new", params["new"]]
    else:
        argv = ["add", "--disk", params["disk"]]
    return [*argv, "--wipe"] if params["wipe"] else argv


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        required_if=[("state", "replaced", ("old", "new")), ("state", "added", ("disk",))],
        mutually_exclusive=[("disk", "old"), ("disk", "new")],
        supports_check_mode=True,
    )
    base = [executable(module), *command(module.params)]
    argv = [*base, "--dry-run", "--json"]
    rc, planned = report(module, argv)
    to_do = planned["would_change"] > 0 or planned["undecided"] > 0
    if not to_do or module.check_mode:
        module.exit_json(changed=to_do, plan=planned["plan"], report=planned, rc=rc, cmd=argv)
    argv = [*base, "--yes", "--json"]
    rc, applied = report(module, argv)
    module.exit_json(changed=applied["changed"] > 0, plan=applied["plan"], report=applied, rc=rc, cmd=argv)


if __name__ == "__main__":
    main()
