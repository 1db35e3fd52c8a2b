# Copyright: esp-mirror contributors
# MIT License (see the repository's pyproject.toml)
"""Running the installed esp-mirror program with ``--json``: what the modules share.

The modules never import esp_mirror_plugin: they run the program the managed host has
(``/usr/local/sbin/esp-mirror`` on a system esp-mirror set up), read its JSON report, and pass
its error line through unchanged when it refuses (exit 2: bad input, nothing changed).

esp-mirror's exit codes are below (:data:`EXIT_CODES`), in esp-mirror's words (its
``errors.MEANINGS``, which ``esp-mirror --help`` prints; the repository's
tests/unit/test_ansible_modules.py holds this copy to them). A task succeeds on 0, and the info
module also takes status's 1 (problems) and 2 (not set up) as facts; any other code fails it
with esp-mirror's message: 1 a step failed, 2 bad input, 70 an internal error (a bug in
esp-mirror, to report), 130 interrupted.
"""

from __future__ import annotations

import json
import shlex

PROGRAM = "esp-mirror"

DONE = 0
PROBLEMS = 1
BAD_INPUT = 2
INTERNAL_ERROR = 70
INTERRUPTED = 130
EXIT_CODES = {
    DONE: "done; status: the mirror is healthy; check: the members are identical",
    PROBLEMS: "problems found (status, check: they are listed; heal: a member was left out), or a step failed "
    "(the message names it): fix the cause and run the same command again, it continues from there",
    BAD_INPUT: "bad input, or the confirmation was not given: nothing was changed (one line names the problem "
    "and the fix); status: esp-mirror is not set up here",
    INTERNAL_ERROR: "internal error: a bug in esp-mirror, said in one line; run the command again with --debug "
    "for the traceback and report it",
    INTERRUPTED: "interrupted (Ctrl-C): run the same command again, it continues from where it stopped",
}


def executable(module):
    """The esp-mirror to run: the ``executable`` option, else the one on PATH (Ansible also looks
    in /sbin, /usr/sbin and /usr/local/sbin, where an installed system has it)."""
    return module.params["executable"] or module.get_bin_path(PROGRAM, required=True)


def run(module, argv):
    """Run ``argv`` (no shell); return (rc, stdout, stderr)."""
    return module.run_command(argv, check_rc=False)


def meaning(rc):
    """What esp-mirror's exit code ``rc`` means, in its words."""
    return EXIT_CODES.get(rc, "not an exit code of esp-mirror")


def fail(module, argv, rc, stdout, stderr):
    """Fail the task with what esp-mirror said on stderr, unchanged (one line for bad input and
    for an internal error); with the meaning of its exit code when it said nothing."""
    msg = stderr.strip() or f"{shlex.join(argv)} exited with {rc} ({meaning(rc)}) and printed nothing on stderr"
    module.fail_json(msg=msg, rc=rc, cmd=argv, stdout=stdout, stderr=stderr)


def report(module, argv, ok=(DONE,)):
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
        if rc == DONE:
            module.fail_json(
                msg=f"{shlex.join(argv)} printed no JSON report ({problem}): is this an esp-mirror that knows --json?",
                rc=rc,
                cmd=argv,
                stdout=stdout,
                stderr=stderr,
            )
        fail(module, argv, rc, stdout, stderr)
    return rc, data
