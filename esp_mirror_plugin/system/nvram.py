"""The firmware's boot entries as ``efibootmgr -v`` shows them: BootCurrent, BootOrder, and for
each Boot#### its label, the partition GUID it points at and the loader file.

efibootmgr 17 and 18 print entries slightly differently (a tab, or only a space, between the
label and the device path); both are read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE = re.compile(r"^Boot([0-9A-Fa-f]{4})(\*?)\s+(.*)$")
_HD = re.compile(r"HD\((\d+),GPT,([0-9A-Fa-f-]{36})", re.IGNORECASE)
_FILE = re.compile(r"(?<![A-Za-z])File\(([^)]*)\)|\)/(\\[^\s]*)", re.IGNORECASE)


@dataclass(frozen=True)
class BootEntry:
    number: str  # four upper-case hex digits
    active: bool
    label: str
    partuuid: str  # lower case, "" when the entry is not on a GPT partition
    loader: str  # \EFI\...\x.efi, "" when none
    path: str  # the device path text as efibootmgr printed it
    args: str = ""  # what it passes its loader: the optional data as UCS-2 text ("" when none or not text)


@dataclass(frozen=True)
class BootState:
    current: str | None
    order: tuple[str, ...]
    entries: tuple[BootEntry, ...]

    def entry(self, number: str) -> BootEntry | None:
        return next((e for e in self.entries if e.number == number), None)


def parse(text: str) -> BootState:
    """Parse ``efibootmgr -v`` output (efibootmgr 17 and 18 layouts)."""
    current: str | None = None
    order: tuple[str, ...] = ()
    entries: list[BootEntry] = []
    for line in text.splitlines():
        if line.startswith("BootCurrent:"):
            current = line.split(":", 1)[1].strip().upper()
        elif line.startswith("BootOrder:"):
            order = tuple(n.strip().upper() for n in line.split(":", 1)[1].split(",") if n.strip())
        elif match := _LINE.match(line):
            rest = match.group(3)
            label, sep, path = rest.partition("\t")
            if not sep:  # no tab: the device path starts at the first known node
                at = min((i for i in (rest.find(" HD("), rest.find(" PciRoot(")) if i >= 0), default=-1)
                label, path = (rest[:at], rest[at + 1 :]) if at >= 0 else (rest, "")
            hd = _HD.search(path)
            file = _FILE.search(path)
            loader = (file.group(1) or file.group(2)) if file else ""
            data = path[file.end() :] if file else ""
            glued = _GLUED.match(loader)  # efibootmgr 18 prints the optional data right after the path
            if glued:
                loader, data = glued.group(1), glued.group(2) + data
            args = _args(data)
            entries.append(
                BootEntry(
                    number=match.group(1).upper(),
                    active=bool(match.group(2)),
                    label=label.rstrip(),
                    partuuid=hd.group(2).lower() if hd else "",
                    loader=loader,
                    path=path.strip(),
                    args=args,
                )
            )
    return BootState(current, order, tuple(entries))


_GLUED = re.compile(r"^(.*?\.efi)([0-9A-Fa-f]+)$", re.IGNORECASE)
_HEX = re.compile(r"^\s*([0-9A-Fa-f]{4,})\s*$")
# efibootmgr 18 prints an entry that starts shim with its optional data as text: " File(.TEXT)"
_SHIM_TEXT = re.compile(r"^\s*File\(\.(.*)\)\s*$")


def _args(rest: str) -> str:
    """The optional data after the device path as the text it holds: efibootmgr prints data that is
    not plain ASCII as hex digits, and what ``--unicode`` wrote is UCS-2 (a NUL at its end);
    efibootmgr 18 decodes it for an entry that starts shim (``File(.\\EFI\\systemd\\...)``)."""
    shim = _SHIM_TEXT.match(rest)
    if shim:
        return shim.group(1).rstrip("\0")
    found = _HEX.match(rest)
    if not found or len(found.group(1)) % 4:
        return ""
    try:
        text = bytes.fromhex(found.group(1)).decode("utf-16-le")
    except UnicodeDecodeError:
        return ""
    text = text.rstrip("\0")
    return text if text.isprintable() else ""
