"""Where esp-mirror keeps its state on a machine: one constant per path, each relative to the
root it belongs to (``/`` or ``--target``), except :data:`REPAIR_BACKUPS`, an option's default.

Every module that reads or writes one of these imports it from here, so a path has one spelling
(tests/unit/test_layers.py fails on a second). The record of what apply set up is not state but
configuration: /etc/esp-mirror/esp-mirror.yaml (:mod:`esp_mirror_plugin.pipeline.record`).
"""

from __future__ import annotations

STATE_DIR = "var/lib/esp-mirror"
INITRAMFS_STAMP = f"{STATE_DIR}/initramfs.sha256"  # sha256 of the last regeneration's inputs
HISTORY = f"{STATE_DIR}/history"  # one line per heal, replace, add and repair
LAST_CHECK = f"{STATE_DIR}/last-check.json"  # the result of the last check
REPAIR_JOURNAL = f"{STATE_DIR}/repair.json"  # a repair that has begun to change a member
ADOPT_JOURNAL = f"{STATE_DIR}/adopt.json"  # an adoption that has begun to change the machine
RELEASE_JOURNAL = f"{STATE_DIR}/release.json"  # a release that has begun to take members out
ADOPT_BACKUPS = f"{STATE_DIR}/adopt"  # adopt's tar of every ESP, each disk's GPT, the fstab lines
REPAIR_BACKUPS = f"/{STATE_DIR}"  # repair's tar of the files it overwrites (--backup-dir's default)
