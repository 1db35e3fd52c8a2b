"""Whether an EFI image (PE/COFF) carries an Authenticode signature, read from its bytes.

With Secure Boot on, the firmware starts only images signed by a key in db (or, through shim, in
the MOK list). A mirror whose members hold different loaders, or an unsigned one, boots from some
disks and not from others; this module is how status, check and plan tell. Only the headers and
the Certificate Table are read: nothing is verified cryptographically (the firmware does that),
so ``signed`` means "carries a PKCS#7 signature", not "a key here trusts it".

PE layout (Microsoft's PE format specification): "MZ", the PE header's offset at 0x3c, "PE\\0\\0",
the 20-byte COFF header, the optional header (magic 0x10b PE32 or 0x20b PE32+) whose data
directories start at offset 96 or 112; directory 4, the Certificate Table, holds a FILE offset
(not an RVA) and a size. Its entries are WIN_CERTIFICATEs (dwLength u32, wRevision u16,
wCertificateType u16, the bytes), each 8-byte aligned; type 2 is PKCS#7 signed data.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

PE32, PE32_PLUS = 0x10B, 0x20B
CERTIFICATE_TABLE = 4  # the data directory's index
WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002
COMMON_NAME = b"\x06\x03\x55\x04\x03"  # DER: OBJECT IDENTIFIER 2.5.4.3 (id-at-commonName)
STRING_TAGS = {0x0C: "utf-8", 0x13: "ascii", 0x14: "latin-1", 0x16: "ascii"}  # UTF8, Printable, T61, IA5


@dataclass(frozen=True)
class Signature:
    """What the image's Certificate Table holds.

    ``pe`` False: not a PE image at all, or one cut short (headers or certificate table past the
    end of the data): the firmware starts neither. ``digest`` (sha256 of the certificate table)
    tells two signed copies apart: the same image signed by another key, or another build.
    """

    pe: bool
    signed: bool = False  # at least one PKCS#7 signed-data certificate
    digest: str = ""  # sha256 hex of the certificate table; "" when unsigned
    signers: tuple[str, ...] = ()  # commonNames in the PKCS#7 blob (a heuristic: see common_names)

    def describe(self) -> str:
        """ "signed (CN, ...)", "unsigned" or "not an EFI image", for status and check."""
        if not self.pe:
            return "not an EFI image"
        if not self.signed:
            return "unsigned"
        return f"signed ({', '.join(self.signers)})" if self.signers else "signed"


NOT_PE = Signature(pe=False)


def signature(data: bytes) -> Signature:
    """The signature of the PE image ``data``; never raises (garbage is ``pe=False``)."""
    table = _certificate_table(data)
    if table is None:
        return NOT_PE
    start, size = table
    if size == 0:
        return Signature(pe=True)
    blobs = []
    offset, end = start, start + size
    while offset + 8 <= end:
        length, _revision, kind = struct.unpack_from("<IHH", data, offset)
        if length < 8 or offset + length > end:
            break  # a malformed entry: what came before it is still read
        if kind == WIN_CERT_TYPE_PKCS_SIGNED_DATA:
            blobs.append(data[offset + 8 : offset + length])
        offset += (length + 7) & ~7
    if not blobs:
        return Signature(pe=True)
    names = tuple(dict.fromkeys(n for blob in blobs for n in common_names(blob)))
    return Signature(pe=True, signed=True, digest=hashlib.sha256(data[start:end]).hexdigest(), signers=names)


def _certificate_table(data: bytes) -> tuple[int, int] | None:
    """(file offset, size) of the Certificate Table; (0, 0) when there is none; None: not PE."""
    try:
        if data[:2] != b"MZ":
            return None
        (pe_offset,) = struct.unpack_from("<I", data, 0x3C)
        if data[pe_offset : pe_offset + 4] != b"PE\0\0":
            return None
        optional = pe_offset + 24
        (optional_size,) = struct.unpack_from("<H", data, pe_offset + 20)
        (magic,) = struct.unpack_from("<H", data, optional)
        if magic not in (PE32, PE32_PLUS):
            return None
        directories = optional + (96 if magic == PE32 else 112)
        (count,) = struct.unpack_from("<I", data, directories - 4)  # NumberOfRvaAndSizes
        entry = directories + 8 * CERTIFICATE_TABLE
        if count <= CERTIFICATE_TABLE or entry + 8 > optional + optional_size:
            return (0, 0)  # the headers have no Certificate Table entry: nothing signed
        start, size = struct.unpack_from("<II", data, entry)
    except struct.error:  # cut short inside the headers
        return None
    if size == 0:
        return (0, 0)
    if start + size > len(data) or start < optional:
        return None  # the table lies past the end: a truncated image
    return start, size


def common_names(blob: bytes) -> tuple[str, ...]:
    """The commonName strings in a PKCS#7 blob, deduplicated, in order of appearance.

    A heuristic, not a DER parser: every ``OID 2.5.4.3`` followed by a string is taken, so the
    names of the signer's certificate AND of its issuers (a CA's) appear, as ``sbverify --list``
    shows them. Enough to tell "Debian Secure Boot Signer" from "Microsoft ... UEFI CA".
    """
    names: list[str] = []
    at = blob.find(COMMON_NAME)
    while at >= 0:
        value = _der_string(blob, at + len(COMMON_NAME))
        if value and value not in names:
            names.append(value)
        at = blob.find(COMMON_NAME, at + 1)
    return tuple(names)


def _der_string(blob: bytes, at: int) -> str | None:
    """The DER string (UTF8, Printable, T61 or IA5) at ``at``, or None."""
    if at + 2 > len(blob) or blob[at] not in STRING_TAGS:
        return None
    encoding, length, start = STRING_TAGS[blob[at]], blob[at + 1], at + 2
    if length & 0x80:  # long form: the next (length & 0x7f) bytes are the length
        width = length & 0x7F
        if width == 0 or width > 2 or start + width > len(blob):
            return None
        length, start = int.from_bytes(blob[start : start + width], "big"), start + width
    if start + length > len(blob):
        return None
    return blob[start : start + length].decode(encoding, "replace")
