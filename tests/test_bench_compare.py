"""`soundloom bench generate --compare`: two tiny generator bundles timed against each other in one run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_generator import tiny_generator_bundle

import app.cli as cli


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> tuple[Path, Path]:
    """A few-step ping-pong bundle without guidance and its euler base with guidance (as ARC and base)."""
    base = tiny_generator_bundle(tmp_path_factory.mktemp("compare"))
    arc = base.parent / "generator-arc"
    shutil.copytree(base, arc)  # beside the base, so its codec's relative path still holds
    meta = json.loads((arc / "model.json").read_text())
    meta["config"].update(sampler="pingpong", steps=2, guidance=1.0)
    (arc / "model.json").write_text(json.dumps(meta))
    return arc, base


def test_compare_reports_both_models(bundles, tmp_path, capsys):
    from training.bench_generate import run_compare_bench

    arc, base = bundles
    out = tmp_path / "compare.json"
    report = run_compare_bench(arc, base, out, prompts=3, seconds=0.5, warmup=1)
    saved = json.loads(out.read_text())
    assert saved == report and list(saved) == ["compare"]
    c = saved["compare"]
    assert list(c["models"]) == ["model", "compare"]
    a, b = c["models"]["model"], c["models"]["compare"]
    assert (a["sampler"], a["steps"], a["guidance"]) == ("pingpong", 2, 1.0)
    assert (b["sampler"], b["steps"], b["guidance"]) == ("euler", 4, 4.0)
    for row in (a, b):
        md = row["median"]
        assert md["total_s"] > 0 and md["dit_s"] > 0 and md["dit_step_ms"] > 0
        assert row["cold_start_s"] >= row["load_s"] > 0 and row["first_generate_s"] > 0
        assert row["dit_flops"]["flops"] > 0 and row["floor_s"] > 0 and row["dit_s_over_floor"] > 0
        assert row["dit_flops"]["forwards"] == row["steps"]
    # the guided base runs both halves in one batch-2 forward: twice the FLOPs of the same DiT's forward
    assert (a["dit_flops"]["batch"], b["dit_flops"]["batch"]) == (1, 2)
    assert b["dit_flops"]["flops_per_forward"] == pytest.approx(
        2 * a["dit_flops"]["flops_per_forward"], rel=0.05
    )
    assert c["ratios"]["dit_s"] == pytest.approx(b["median"]["dit_s"] / a["median"]["dit_s"], abs=1e-3)
    assert c["ratios"]["total_s"] == pytest.approx(b["median"]["total_s"] / a["median"]["total_s"], abs=1e-3)
    assert c["matmul"]["flops_per_s"] > 0 and c["peak_rss_mib"] > 0
    runs = c["runs"]
    assert len(runs) == 6 and [r["model"] for r in runs[:4]] == ["model", "compare", "compare", "model"]
    printed = capsys.readouterr().out
    assert "cold start s" in printed and "compute floor s" in printed and "VmHWM" in printed


def test_compare_with_options_is_refused(bundles, capsys):
    arc, base = bundles
    code = cli.main(["bench", "generate", "--model", str(arc), "--compare", str(base), "--options"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--compare" in err[0] and "--options" in err[0]
