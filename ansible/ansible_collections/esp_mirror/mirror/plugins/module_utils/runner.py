# Copyright: esp-mirror contributors
# MIT License (see the repository's pyproject.toml)
"""Running the installed esp-mirror program with ``--json``: what the modules share.

The modules never import esp_mirror_plugin: they run the program the managed host has
(``/usr/local/sbin/esp-mirror`` on a system esp-mirror set up), read its JSON report, and pass
its error line through unchanged when it refuses (exit 2: bad input, nothing changed).
"""

from __future__ import annotations

import json
import shlex

PROGRAM = "esp-mirror"


def executable(module):
    """The esp-mirror to run: the ``executable`` option, else the one on PATH (Ansible also looks
    in /sbin, /usr/sbin and /usr/local/sbin, where an installed system has it)."""
    return module.params["executable"] or module.get_bin_path(PROGRAM, required=True)


def run(module, argv):
    """Run ``argv`` (no shell); return (rc, stdout, stderr)."""
    return module.run_command(argv, check_rc=False)


def fail(module, argv, rc, stdout, stderr):
    """Fail the task with what esp-mirror said on stderr, unchanged (one line for bad input)."""
    msg = stderr.strip() or f"{shlex.join(argv)} exited with {rc} and printed nothing on stderr"
    module.fail_json(msg=msg, rc=rc, cmd=argv, stdout=stdout, stderr=stderr)


def report(module, argv, ok=(0,)):
    """Run ``argv`` and return (rc, its JSON report). Any other exit code, or one of ``ok`` but 0
    without a JSON report (esp-mirror refused: its error is on stderr), fails the task."""
    rc, stdout, stderr = run(module, argv)
    data, problem = None, None
    if rc in ok:
        try:
            data = json.loads(stdout)
        except ValueError as exc:
            problem = str(exc)
    if data is None:
        if rc == 0:
            module.fail_json(
                msg=f"{shlex.join(argv)} printed no JSON report ({problem}): is this an esp-mirror that knows --json?",
                rc=rc,
                cmd=argv,
                stdout=stdout,
                stderr=stderr,
            )
        fail(module, argv, rc, stdout, stderr)
    return rc, data
