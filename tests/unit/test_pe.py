"""system/pe.py: whether an EFI image carries a signature, from hand-built PE byte strings."""

from __future__ import annotations

import hashlib
import random
import struct

import pytest
from conftest import der_cn, make_pe, pkcs7

from esp_mirror_plugin.system import pe
from esp_mirror_plugin.system.pe import Signature

SIGNER = "Debian Secure Boot Signer 2022 - shim"
CA = "Debian Secure Boot CA"


@pytest.mark.parametrize("plus", [True, False], ids=["pe32+", "pe32"])
def test_an_image_without_a_certificate_table_is_pe_and_unsigned(plus):
    assert pe.signature(make_pe(plus=plus)) == Signature(pe=True, signed=False, digest="", signers=())


@pytest.mark.parametrize("plus", [True, False], ids=["pe32+", "pe32"])
def test_a_signed_image_gives_its_signers_and_the_digest_of_its_certificate_table(plus):
    image = make_pe((CA, SIGNER, CA), plus=plus)
    directories = 64 + 24 + (112 if plus else 96)
    start, size = struct.unpack_from("<II", image, directories + 8 * 4)

    found = pe.signature(image)

    assert found == Signature(
        pe=True,
        signed=True,
        digest=hashlib.sha256(image[start : start + size]).hexdigest(),
        signers=(CA, SIGNER),  # deduplicated, in order
    )
    assert found.describe() == f"signed ({CA}, {SIGNER})"


def test_two_images_signed_by_other_keys_differ_in_digest():
    assert pe.signature(make_pe((SIGNER,))).digest != pe.signature(make_pe(("Someone else",))).digest


def test_a_certificate_table_of_another_type_is_not_a_signature():
    image = bytearray(make_pe((SIGNER,)))
    start, _ = struct.unpack_from("<II", image, 64 + 24 + 112 + 32)
    struct.pack_into("<H", image, start + 6, 0x0001)  # WIN_CERT_TYPE_X509, not PKCS signed data
    assert pe.signature(bytes(image)) == Signature(pe=True)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"MZ",
        b"MZ grub (removable path)\n",  # the test mirror's stand-in files
        make_pe((SIGNER,))[:100],  # cut inside the headers
        make_pe((SIGNER,))[:-9],  # cut inside the certificate table
        b"\x7fELF" + bytes(200),
        b"MZ" + bytes(58) + struct.pack("<I", 0xFFFFFFF0),  # the PE offset points past the end
    ],
    ids=["empty", "mz-only", "text", "truncated-headers", "truncated-table", "elf", "bad-offset"],
)
def test_garbage_or_truncated_data_is_not_pe_and_never_raises(data):
    found = pe.signature(data)
    assert found == Signature(pe=False)
    assert found.describe() == "not an EFI image"


def test_random_bytes_after_a_valid_header_never_raise():
    rng = random.Random(19)
    image = make_pe((SIGNER,))
    for _ in range(300):
        data = bytearray(image)
        for _ in range(8):
            data[rng.randrange(len(data))] = rng.randrange(256)
        pe.signature(bytes(data[: rng.randrange(len(data) + 1)]))


@pytest.mark.parametrize("tag", [0x0C, 0x13, 0x14, 0x16], ids=["utf8", "printable", "t61", "ia5"])
def test_common_names_are_read_from_every_string_type(tag):
    assert pe.common_names(b"\x30\x00" + der_cn("Shim CA", tag)) == ("Shim CA",)


def test_common_names_read_a_long_form_length_and_skip_a_cut_one():
    name = "L" * 200
    long_form = b"\x06\x03\x55\x04\x03\x0c\x81\xc8" + name.encode()
    assert pe.common_names(long_form + b"\x06\x03\x55\x04\x03\x0c\x40short") == (name,)


def test_pkcs7_stand_in_holds_the_names_in_order():
    assert pe.common_names(pkcs7(CA, SIGNER)) == (CA, SIGNER)
