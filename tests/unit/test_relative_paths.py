"""Paths on the command line are relative to where esp-mirror runs, as in any other tool."""

from __future__ import annotations

import io
import json

from esp_mirror_plugin import cli
from esp_mirror_plugin.system.recording import RecordingRunner
from esp_mirror_plugin.system.runner import Result


def test_relative_image_paths_and_efi_image_are_taken_from_the_working_directory(tmp_path, monkeypatch):
    for name in ("a.img", "b.img"):
        (tmp_path / name).write_bytes(b"")
        (tmp_path / name).open("r+b").truncate(1 << 30)
    (tmp_path / "payload.efi").write_bytes(b"MZ")
    (tmp_path / "root/etc").mkdir(parents=True)
    (tmp_path / "root/usr/sbin").mkdir(parents=True)  # the installed system's mdadm
    (tmp_path / "root/usr/sbin/mdadm").write_text("#!/bin/sh\n")
    (tmp_path / "root/usr/sbin/mdadm").chmod(0o755)
    # nothing on the blank images (blkid exit 2); no running array, whatever this host has
    runner = RecordingRunner(
        responders=[
            lambda argv: Result(argv, {"blkid": 2, "mdadm": 1}[argv[0]]) if argv[0] in ("blkid", "mdadm") else None
        ]
    )
    monkeypatch.chdir(tmp_path)
    out, err = io.StringIO(), io.StringIO()

    code = cli.main(
        [
            "plan",
            "--json",
            "--disk",
            "a.img",
            "--disk",
            "./b.img",
            "--target",
            "root",
            "--bootloader",
            "efi",
            "--efi-image",
            "payload.efi",
            "--initramfs",
            "skip",
        ],
        out=out,
        err=err,
        runner=runner,
    )

    assert (code, err.getvalue()) == (0, "")
    plan = json.loads(out.getvalue())
    assert [m["disk"] for m in plan["members"]] == [str(tmp_path / "a.img"), str(tmp_path / "b.img")]
    copies = [s for g in plan["groups"] for s in g["steps"] if s["kind"] == "copy-file"]
    assert {c["source"] for c in copies} == {str(tmp_path / "payload.efi")}
    assert all(c["dest"].startswith(str(tmp_path / "root/boot/efi/")) for c in copies)
