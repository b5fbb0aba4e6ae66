"""The studio under load (issue 8): `soundloom bench load`'s harness (app/bench_load.py) on the tiny
generator bundle. The studio runs in a subprocess, driven through gradio_client: 16 concurrent
/generate requests all succeed, a flood beyond the queue's size is refused with the queue-full message
while the server keeps answering, and its memory returns to the baseline within the bench's margin."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_generator import tiny_generator_bundle

import app.cli as cli
from app.bench_load import MARGIN_MIB, OVERFLOW, connect, percentile, run_bench
from app.browser import free_port
from app.studio import MAX_QUEUE, SESSION_CAPACITY


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_generator_bundle(tmp_path_factory.mktemp("load-bundle"))


def test_sixteen_concurrent_requests_succeed_the_queue_holds_and_memory_returns(bundle, tmp_path):
    report = run_bench(
        bundle, tmp_path / "load.json", requests=16, seconds=1.0, steps=2, settle_s=3.0, blocker_s=4.0
    )
    assert json.loads((tmp_path / "load.json").read_text())["queue"] == report["queue"]

    burst = report["burst"]
    assert burst["succeeded"] == burst["requests"] == 16, burst["runs"]
    latency = burst["latency_s"]
    assert 0 < latency["min"] <= latency["p50"] <= latency["p95"] <= latency["max"]
    # one generation at a time: the last of 16 waited for the others (run side by side, all 16 would end
    # together, max close to min; one at a time, the first is one generation plus the client's overhead,
    # measured 1.5 s here on idle cores against a max of 5.8 s, and 4x that ratio under load)
    assert latency["max"] > 2 * latency["min"], burst["runs"]

    queue = report["queue"]
    assert queue["sent"] == MAX_QUEUE + OVERFLOW
    assert queue["taken_and_finished"] == MAX_QUEUE, queue
    assert queue["refused"] == OVERFLOW and queue["refusal_messages"] == ["Queue is full! Please try again."]
    assert queue["other_errors"] == queue["hung"] == 0, queue["errors"]
    assert queue["request_afterwards"]["status"] == "ok" and queue["server_alive"]
    assert queue["held"]

    memory = report["memory"]
    assert memory["cold_mib"] > 100  # torch, gradio and the text encoder: the figures are real
    assert memory["sessions_filled"] == SESSION_CAPACITY  # the baseline is taken with the session store full
    assert memory["baseline_mib"] >= memory["cold_mib"]
    assert memory["peak_mib"] >= max(memory["baseline_mib"], memory["after_mib"])
    assert memory["margin_mib"] >= MARGIN_MIB
    # The burst and the overflow bring ~30 new sessions; with the store full they replace old ones, so what
    # stays is theirs: +38 MiB here (margin 65). From an empty store RSS kept +60..+68 MiB, ~30 of it the
    # store filling, and the memory check, then an xfail, passed in some runs only.
    assert memory["returned_to_baseline"], memory
    # no leak: the same burst again keeps (measured here) -4..+5 MiB more
    assert memory["repeat_succeeded"] == 16
    assert memory["repeat_growth_mib"] <= 24, memory


@pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated")
@pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")
def test_the_studio_keeps_the_state_of_a_bounded_number_of_sessions(bundle, tmp_path):
    """Every API client is a session, and Gradio keeps 10,000 by default, each with a copy of the page's config:
    a studio used by many clients grew without bound. It keeps SESSION_CAPACITY; older ones start afresh."""
    from app.studio import Studio, launch

    port = free_port()
    demo = launch(Studio(bundle, tmp_path / "outputs"), port=port, block=False, preload=False)
    try:
        url = f"http://127.0.0.1:{port}/"
        for i in range(SESSION_CAPACITY + 4):
            result = connect(url).predict("a click", 0.25, 2, i, 1, api_name="/generate")
            assert result[0] is not None
        assert demo.state_holder.capacity == SESSION_CAPACITY
        assert len(demo.state_holder.session_data) == SESSION_CAPACITY  # 36 sessions came, 32 are kept
    finally:
        demo.close()


def test_percentiles_are_numpys_linear_interpolation():
    rng = np.random.default_rng(0)
    for n in (1, 2, 16, 33):
        values = list(rng.exponential(size=n))
        for p in (0, 50, 95, 100):
            assert percentile(values, p) == pytest.approx(np.percentile(values, p))


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["bench", "load", "--requests", str(MAX_QUEUE + 2)], f"between 1 and {MAX_QUEUE + 1}"),
        (["bench", "load", "--requests", "0"], "above 0"),
        (["bench", "load", "--seconds", "-1"], "must be above 0"),
        (["bench", "load", "--model", "/nonexistent/bundle"], "does not exist"),
        (["bench", "load", "--data", "somewhere"], "`bench load` takes --model"),
        (["bench", "codec", "--requests", "4"], "--requests is for `soundloom bench load`"),
    ],
)
def test_bench_load_refuses_bad_flags_with_one_line(capsys, argv, needle):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
