#!/usr/bin/python
# Copyright: esp-mirror contributors
# MIT License (see the repository's pyproject.toml)
"""esp_mirror.mirror.info: ``esp-mirror status --json`` as facts."""

from __future__ import annotations

DOCUMENTATION = r"""
module: info
short_description: The health of the mirrored EFI System Partition, as facts
description:
  - Runs C(esp-mirror status --json) on the managed host and returns what it reports as the fact
    C(esp_mirror), and the same under RV(status).
  - A degraded mirror, a missing boot entry or a mirror that is not set up is a fact
    (RV(ansible_facts.esp_mirror.healthy) is false), not a failure; the task fails only when
    esp-mirror itself fails, with its error line, e.g. exit 2 without a report (not run as root)
    or 70 (an internal error, a bug in esp-mirror to report).
  - Changes nothing.
version_added: 0.1.0
author:
  - esp-mirror maintainers (!UNKNOWN)
requirements:
  - esp-mirror on the managed host (an installed system has C(/usr/local/sbin/esp-mirror)).
  - root on the managed host (C(become)), as status reads md and EFI state.
extends_documentation_fragment:
  - esp_mirror.mirror.executable
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.facts
attributes:
  check_mode:
    support: full
    details: It only reads, in check mode too.
  diff_mode:
    support: none
  facts:
    support: full
  platform:
    platforms: posix
seealso:
  - module: esp_mirror.mirror.apply
  - module: esp_mirror.mirror.member
"""

EXAMPLES = r"""
- name: Look at the ESP mirror
  esp_mirror.mirror.info:
  become: true

- name: Say what to do when it is not healthy
  ansible.builtin.debug:
    msg: "{{ ansible_facts.esp_mirror.problems }}"
  when: not ansible_facts.esp_mirror.healthy
"""

RETURN = r"""
ansible_facts:
  description: Facts about the ESP mirror.
  returned: success
  type: dict
  contains:
    esp_mirror:
      description:
        - What C(esp-mirror status --json) reports (C(setup), C(exit_code), C(problems), C(array) with
          its C(members), C(mount), C(entries), C(booted_disk), C(last_event), ...), and C(healthy).
        - C(exit_code) is status's exit code, 0 healthy, 1 problems, 2 not set up.
      returned: success
      type: dict
      contains:
        healthy:
          description: Whether status found nothing wrong (exit code 0).
          type: bool
          returned: success
        setup:
          description: Whether esp-mirror set up a mirror here (its record is there).
          type: bool
          returned: success
        problems:
          description: What is not healthy, one line each saying what to run.
          type: list
          elements: str
          returned: success
        last_check:
          description: The last periodic check, when this esp-mirror's status reports it; null otherwise.
          type: raw
          returned: success
status:
  description: The same as RV(ansible_facts.esp_mirror).
  returned: success
  type: dict
cmd:
  description: The command line that ran.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.esp_mirror.mirror.plugins.module_utils.runner import (
    BAD_INPUT,
    DONE,
    PROBLEMS,
    executable,
    report,
)

# esp-mirror status's exit codes with a JSON report: healthy, problems found, not set up here
HEALTHY = DONE
NOT_SET_UP = BAD_INPUT


def main():
    module = AnsibleModule(argument_spec=dict(executable=dict(type="path")), supports_check_mode=True)
    argv = [executable(module), "status", "--json"]
    rc, status = report(module, argv, ok=(HEALTHY, PROBLEMS, NOT_SET_UP))
    facts = dict(status, healthy=rc == HEALTHY, last_check=status.get("last_check"))
    # no rc in the result: Ansible takes a result with a non-zero rc for a failed task, and problems
    # are a fact here (esp-mirror status's exit code is in the report, exit_code)
    module.exit_json(changed=False, ansible_facts=dict(esp_mirror=facts), status=facts, cmd=argv)


if __name__ == "__main__":
    main()
