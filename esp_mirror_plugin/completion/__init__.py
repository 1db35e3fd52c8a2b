"""esp-mirror's bash completion, shipped as package data (and inside the zip application).

The script is generated from the command line's parser at development time (``ci/completion``;
tests/unit/test_completion.py fails when it is out of date): its commands, their options and
the values an option takes. Its file is named as bash-completion looks it up, after the
command. apply and refresh install it on the installed system
(/usr/local/share/bash-completion/completions, :mod:`esp_mirror_plugin.hooks.installed`), and a
pip install puts it into its prefix's share/bash-completion/completions.
"""

from __future__ import annotations

from importlib import resources

FILE = "esp-mirror"


def script() -> bytes:
    """The script's text, from wherever esp-mirror runs (a directory or its zip application)."""
    return (resources.files(__name__) / FILE).read_bytes()
