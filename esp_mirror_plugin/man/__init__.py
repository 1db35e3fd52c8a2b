"""esp-mirror(8), the manual page, shipped as package data (and inside the zip application).

The page is generated from the command line's parser by argparse-manpage at development time
(``ci/manpage``; tests/unit/test_manpage.py fails when it is out of date): esp-mirror does not
depend on the generator at run time. apply and refresh install it next to the installed
esp-mirror (:mod:`esp_mirror_plugin.hooks.installed`).
"""

from __future__ import annotations

from importlib import resources

FILE = "esp-mirror.8"


def page() -> bytes:
    """The page's roff source, from wherever esp-mirror runs (a directory or its zip application)."""
    return (resources.files(__name__) / FILE).read_bytes()
