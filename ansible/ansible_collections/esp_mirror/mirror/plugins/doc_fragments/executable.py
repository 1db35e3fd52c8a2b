# The one option every module of the collection has: which esp-mirror it runs.
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  executable:
    description:
      - The esp-mirror program to run.
      - Left out, C(esp-mirror) is looked up on PATH and in /sbin, /usr/sbin and /usr/local/sbin.
    type: path
"""
