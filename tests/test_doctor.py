"""`soundloom doctor`: one line per check, every bundle opened and verified, a broken one named."""

from __future__ import annotations

import shutil

import torch

from app import cli, doctor
from pipelines.bundle import save_bundle


def test_doctor_verifies_every_bundle_and_names_a_broken_one(tmp_path):
    assets = tmp_path / "assets"
    save_bundle(assets / "good", {"a": 1}, {"embedder": {"w": torch.ones(3)}}, kind="embedder")
    broken = assets / "broken"
    shutil.copytree(assets / "good", broken)
    (broken / "embedder.safetensors").write_bytes(b"not the file that was hashed")
    rows = dict(doctor.checks(assets))
    assert rows["bundle good"].startswith("ok, embedder, checksums verified")
    assert rows["bundle broken"].startswith("BROKEN: ") and "\n" not in rows["bundle broken"]
    assert rows["bundle generator"].startswith("missing: ") and "make bundles" in rows["bundle generator"]
    for name in ("torch", "device", "chromium", "ffmpeg", "sound devices", "free disk"):
        assert rows[name], name
    assert rows["device"].startswith("cpu")


def test_a_failing_check_is_reported_not_raised(tmp_path, monkeypatch):
    def broken():
        raise RuntimeError("no\\ntorch here")

    monkeypatch.setattr(doctor, "_torch", broken)
    rows = dict(doctor.checks(tmp_path))
    assert rows["torch"].startswith("check failed (RuntimeError")


def test_the_command_prints_one_line_per_check_and_exits_0(capsys):
    assert cli.main(["doctor"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(doctor.checks()) and all(": " in line for line in lines)
    assert any(line.startswith("bundle generator:") and " ok, generator" in line for line in lines)
