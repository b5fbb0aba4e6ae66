"""`soundloom bench load`: the studio under concurrent /generate requests, measured from outside.

    from app.bench_load import run_bench
    report = run_bench("my-gen", requests=16)     # prints a table, returns the figures

It launches `soundloom studio` in a subprocess on a free loopback port, with output, upload and
download folders of its own (temporary, removed afterwards), waits until it answers, and then drives
it through gradio_client, one client per simulated user:

1. Warm-up: a request at the bench's settings (it waits for the model to load), then one at twice
   its steps, which gives the cost of a step. Then SESSION_CAPACITY clients of their own send one cheap
   request each, so Gradio's store of sessions is as full as any studio's after its first few dozen
   visitors (see below). The server's RSS after them is the baseline.
2. Burst: `requests` clients in as many threads are released together, each sending one request.
   Latency is submit to result, files downloaded, as a user waits for it. The studio runs one
   generation at a time, so latency grows with a request's place in the queue: the last of N waits
   for all N generations.
   All must succeed, so N is at most MAX_QUEUE + 1 (one runs while MAX_QUEUE wait).
3. Overflow: a long request (the blocker) occupies the model, then MAX_QUEUE + OVERFLOW cheap
   requests are released together. The queue must take exactly MAX_QUEUE, refuse the rest with
   Gradio's queue-full message, finish all it took, and answer a fresh request afterwards. If the
   blocker ends before the flood is in (more than MAX_QUEUE taken), the phase runs again with a
   blocker twice as long.
4. Settle: SETTLE_S seconds idle, then the server's RSS again.
5. Repeat: the burst once more with other prompts, then settle: its growth over step 4's RSS is what
   one more load keeps (a leak grows with every load; memory kept once does not grow again).

Memory is the studio process's resident set size (RSS), sampled every SAMPLE_S: psutil when it is
installed, else /proc/PID/status. On Linux the kernel's own peak (VmHWM) is reset after the baseline
through /proc/PID/clear_refs, so the peak includes any spike shorter than a sampling period.

"Returns to baseline" means: after settling, RSS <= baseline + max(MARGIN_FRACTION of the baseline,
MARGIN_MIB). Not every freed byte goes back to the operating system: Gradio runs handlers on a pool of
worker threads, each with its own malloc arena, and Python and torch keep caches. The studio hands
freed heap memory back after every generation (malloc_trim, app/studio.py); without that its RSS
ratcheted up by ~130 MiB over this bench on the tiny test bundle and stayed there. With it, eight
rounds of 16 requests took RSS from 781 MiB to 798 after the first and 798-809 after the other seven:
bounded, not a leak. A leak grows with every request; ~45 requests at ~2 MiB each cross the margin.

The baseline is taken with the session store full. Every gradio_client Client is a session of its own,
and Gradio gives each session, on its first request, a copy of the whole page's config (~1 MiB of this
studio's RSS); it keeps SESSION_CAPACITY of them (app/studio.py) and drops the oldest for a new one. A
studio fresh from its start has none, and filling the store is a bounded one-time cost, not load (32
sessions: +25 MiB on the bundled model, +30 on the tiny test bundle). Measured from a full store, the
bench's ~30 new clients replace old sessions instead of adding to them, so what the burst and the
overflow leave behind is theirs: +38 to +46 MiB, kept once (the same burst again: -4 to +1.4 MiB). The
report keeps the empty-store RSS (`cold_mib`) and the store's cost (`session_store_mib`) beside it.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from app.browser import free_port
from app.studio import DEFAULT_SECONDS, MAX_QUEUE, MAX_TAKES, SESSION_CAPACITY
from pipelines.atomic_files import write_report
from pipelines.errors import BadInput
from pipelines.generator import MAX_STEPS

REPO = Path(__file__).resolve().parent.parent
DEV_PROMPTS = REPO / "assets" / "prompts" / "dev.jsonl"
REQUESTS = 16
OVERFLOW = 4  # requests beyond MAX_QUEUE in the overflow phase: these must be refused
OVERFLOW_SECONDS = 0.5  # the overflow phase's requests are cheap: the queue, not the model, is tested
BLOCKER_S = 8.0  # how long the blocker should keep the model busy while the flood arrives
BLOCKER_TRIES = 3
SETTLE_S = 5.0
SAMPLE_S = 0.05
MARGIN_FRACTION = 0.10
MARGIN_MIB = 64.0
CLIENT_TIMEOUT_S = 120.0  # any one HTTP exchange of a client (connect, read, write)
START_TIMEOUT_S = 300.0  # the studio answering HTTP (imports torch, gradio, transformers)
REQUEST_TIMEOUT_S = 600.0  # one request, queueing included; longer counts as hung
MIB = 2**20


# ---------------------------------------------------------------- the studio process and its memory


@dataclass
class Launched:
    url: str
    process: subprocess.Popen
    log: Path
    ready_s: float


@contextmanager
def launched_studio(model: str | Path | None, root: Path):
    """`soundloom studio` in a subprocess on a free loopback port, its folders under `root`; a Launched."""
    port = free_port()
    command = [sys.executable, "-m", "app", "studio", "--port", str(port), "--no-browser"]
    command += ["--outputs", str(root / "outputs")] + (["--model", str(model)] if model else [])
    env = {**os.environ, "GRADIO_TEMP_DIR": str(root / "gradio"), "PYTHONUNBUFFERED": "1"}
    log = root / "studio.log"
    started = time.perf_counter()
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_until_it_answers(url, process, log)
        yield Launched(url, process, log, time.perf_counter() - started)
    finally:
        _stop(process)


def _wait_until_it_answers(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            last = _last_line(log)
            if process.returncode == 2:  # the studio's own one-sentence refusal (bad --model, ...)
                raise BadInput(last.removeprefix("error: "))
            raise RuntimeError(f"the studio exited with code {process.returncode} before answering: {last}")
        try:
            with urllib.request.urlopen(url + "config", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the studio did not answer within {START_TIMEOUT_S:g} s; it said: {_last_line(log)}")


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def _stop(process: subprocess.Popen) -> None:
    """Ctrl-C, as a user stops the studio; then terminate, then kill."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    for stop in (None, process.terminate, process.kill):
        if stop is not None and process.poll() is None:
            stop()
        try:
            process.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue


def rss_bytes(pid: int) -> int | None:
    """The resident set size of process `pid` (psutil, else /proc); None where neither is available."""
    try:
        import psutil
    except ImportError:
        return _proc_status(pid, "VmRSS")
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return None


def peak_rss_bytes(pid: int) -> int | None:
    """The kernel's peak RSS of `pid` since it started or since `reset_peak_rss` (Linux only)."""
    return _proc_status(pid, "VmHWM")


def reset_peak_rss(pid: int) -> bool:
    """Restart the kernel's peak-RSS count at the current RSS (Linux >= 4.0); False where it cannot."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _proc_status(pid: int, key: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0]) * 1024  # "123456 kB"
    return None


class MemorySampler:
    """Samples a process's RSS every SAMPLE_S on a thread; `mark(name)` starts a named phase."""

    def __init__(self, pid: int):
        self.pid = pid
        self.started = time.perf_counter()
        self.samples: list[tuple[float, int]] = []
        self.phases: list[tuple[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = rss_bytes(self.pid)
            if rss is not None:
                self.samples.append((time.perf_counter() - self.started, rss))
            self._stop.wait(SAMPLE_S)

    def mark(self, name: str) -> None:
        self.phases.append((name, time.perf_counter() - self.started))

    def peak(self, phase: str | None = None) -> int | None:
        """The largest sample of one phase (until the next mark), or of the whole run."""
        start, end = 0.0, math.inf
        if phase is not None:
            names = [name for name, _ in self.phases]
            i = names.index(phase)
            start = self.phases[i][1]
            end = self.phases[i + 1][1] if i + 1 < len(self.phases) else math.inf
        values = [rss for t, rss in self.samples if start <= t < end]
        return max(values) if values else None

    def trace(self, every_s: float = 0.25) -> list[list[float]]:
        """[seconds, MiB] pairs thinned to one per `every_s`, for the JSON report."""
        out, last = [], -math.inf
        for t, rss in self.samples:
            if t - last >= every_s:
                out.append([round(t, 2), round(rss / MIB, 1)])
                last = t
        return out


def settled_rss(pid: int, seconds: float = 1.0) -> int | None:
    """The median of RSS samples over `seconds`: one reading can catch a transient."""
    values = []
    for _ in range(5):
        rss = rss_bytes(pid)
        if rss is not None:
            values.append(rss)
        time.sleep(seconds / 5)
    return int(statistics.median(values)) if values else None


# ---------------------------------------------------------------- requests through gradio_client


@dataclass
class Outcome:
    """One request as its client saw it: "ok", "refused" (queue full), "error" or "hung"."""

    index: int
    status: str
    latency_s: float
    message: str = ""


def connect(url: str, downloads: Path | None = None):
    """A gradio_client Client of its own (its own session, as a separate user would have)."""
    import httpx
    from gradio_client import Client

    return Client(
        url,
        verbose=False,
        download_files=str(downloads) if downloads else False,
        analytics_enabled=False,
        # httpx's 5 s default is too short for a studio busy on 2 cores; the event stream gets
        # Gradio's heartbeat every 15 s, so a read this long means a stuck server
        httpx_kwargs={"timeout": httpx.Timeout(CLIENT_TIMEOUT_S)},
    )


def _in_threads(fn, items) -> list:
    """fn over items, each on its own thread; results in order (the first exception is raised)."""
    items = list(items)
    results: list = [None] * len(items)
    errors: list[BaseException] = []

    def run(i, item):
        try:
            results[i] = fn(item)
        except BaseException as e:  # re-raised below, on the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, item)) for i, item in enumerate(items)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def request(client, prompt: str, seconds: float, steps: int | None, seed: int) -> tuple:
    """One /generate call (one take); the outputs, or the client's exception. Bounded by REQUEST_TIMEOUT_S."""
    job = client.submit(prompt, seconds, steps, seed, 1, api_name="/generate")
    try:
        return job.result(timeout=REQUEST_TIMEOUT_S)
    except TimeoutError:
        job.cancel()
        raise


def released_together(clients: list, calls: list) -> list[Outcome]:
    """Each client makes its call (client -> outputs) at the same moment, from its own thread."""
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError

    gate = threading.Barrier(len(clients))

    def one(i: int) -> Outcome:
        gate.wait()
        started = time.perf_counter()
        try:
            result = calls[i](clients[i])
            status, message = ("ok", "") if Path(result[0]).is_file() else ("error", "no take came back")
        except QueueError as e:
            status, message = "refused", str(e)
        except TimeoutError:
            status, message = "hung", f"no answer within {REQUEST_TIMEOUT_S:g} s"
        except AppError as e:
            status, message = "error", " ".join(str(e).split())
        except Exception as e:  # a dropped connection or a crashed server: recorded, not raised
            status, message = "error", f"{type(e).__name__}: {e}"
        return Outcome(i, status, time.perf_counter() - started, message)

    return _in_threads(one, range(len(clients)))


def warm_up(client, prompt: str, seconds: float, steps: int | None) -> tuple[dict, dict]:
    """Two requests: the first loads the model; the second, at twice the steps, prices a step.
    Their settings records (the studio's "settings used" output); BadInput if the studio cannot generate."""
    from gradio_client.exceptions import AppError

    def settings_used(steps: int | None, seed: int) -> dict:
        try:
            return request(client, prompt, seconds, steps, seed)[MAX_TAKES + 1]
        except AppError as e:  # no bundle, a damaged one, seconds beyond the model's: the studio's sentence
            raise BadInput(" ".join(str(e).split())) from None

    first = settings_used(steps, 0)  # steps None: the bundle's default, which the record tells
    return first, settings_used(min(2 * first["steps"], MAX_STEPS), 1)


def fill_sessions(url: str, prompt: str, count: int) -> int:
    """`count` sessions, one after another: a client of its own sends one cheap request (OVERFLOW_SECONDS at
    one step) and closes. How many succeeded; a failure here is the studio's, and the burst will show it."""
    done = 0
    for i in range(count):
        client = connect(url)
        try:
            request(client, prompt, OVERFLOW_SECONDS, 1, 500 + i)
            done += 1
        except Exception:  # recorded as a count; the phases after it say what is wrong
            pass
        finally:
            client.close()
    return done


def step_cost_s(first: dict, second: dict) -> float:
    """Seconds per sampling step, from two generations that differ only in their steps."""
    extra_steps = second["steps"] - first["steps"]
    extra_s = second["generation_time_s"] - first["generation_time_s"]
    per_step = extra_s / extra_steps if extra_steps > 0 else 0.0
    # noise on busy cores can make the difference tiny or negative: never below the average share
    return max(per_step, 0.5 * first["generation_time_s"] / first["steps"], 1e-4)


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile, linearly interpolated between order statistics (numpy's default)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def overflow(
    url: str, clients: list, prompts: list[str], seconds: float, blocker_steps: int
) -> tuple[dict, list[Outcome]]:
    """One try of the overflow phase: the blocker runs, then len(clients) cheap requests at once."""
    from gradio_client.utils import Status

    blocker_client = connect(url)
    ended: list[float] = []
    try:
        started = time.perf_counter()
        blocker = blocker_client.submit(prompts[0], seconds, blocker_steps, 7, 1, api_name="/generate")
        waiter = threading.Thread(
            target=lambda: (blocker.exception(), ended.append(time.perf_counter())), daemon=True
        )
        waiter.start()
        while blocker.status().code not in (Status.PROCESSING, Status.PROGRESS, Status.ITERATING):
            if blocker.done() or time.perf_counter() - started > REQUEST_TIMEOUT_S:
                raise RuntimeError("the overflow phase's long request never started running")
            time.sleep(0.02)
        calls = [_call(prompts[i % len(prompts)], OVERFLOW_SECONDS, 1, 100 + i) for i in range(len(clients))]
        outcomes = released_together(clients, calls)
        blocker.result(timeout=REQUEST_TIMEOUT_S)
        waiter.join()
    finally:
        blocker_client.close()
    return {"blocker_steps": blocker_steps, "blocker_s": round(ended[0] - started, 2)}, outcomes


def _call(prompt: str, seconds: float, steps: int | None, seed: int):
    return lambda client: request(client, prompt, seconds, steps, seed)


def pick_prompts(count: int) -> list[str]:
    """`count` prompts from the dev set, cycling when it has fewer: distinct text for the encoder."""
    from training.jsonl import read_jsonl

    prompts = list(dict.fromkeys(r["prompt"] for r in read_jsonl(DEV_PROMPTS, tolerate_torn_tail=False)))
    return [prompts[i % len(prompts)] for i in range(count)]


# ---------------------------------------------------------------- the bench


def run_bench(
    model: str | Path | None,
    json_out: str | Path | None = None,
    *,
    requests: int = REQUESTS,
    seconds: float = DEFAULT_SECONDS,
    steps: int | None = None,
    settle_s: float = SETTLE_S,
    blocker_s: float = BLOCKER_S,
) -> dict:
    """Launch the studio, load it, measure; prints a table and returns (with json_out, writes) the report.

    `settle_s` and `blocker_s` exist so a test can make the bench quicker; the CLI uses the defaults."""
    if not 1 <= requests <= MAX_QUEUE + 1:
        raise BadInput(
            f"--requests must be between 1 and {MAX_QUEUE + 1} (the studio queues {MAX_QUEUE} behind the "
            f"one it runs; the overflow phase already sends more), not {requests}."
        )
    root = Path(tempfile.mkdtemp(prefix="soundloom-bench-load-"))
    started = time.perf_counter()
    try:
        with launched_studio(model, root) as studio:
            report = _measure(studio, root, requests, seconds, steps, settle_s, blocker_s)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report["wall_time_s"] = round(time.perf_counter() - started, 1)
    print_table(report)
    if json_out:
        write_report(json_out, report)
    return report


def _measure(studio: Launched, root: Path, requests: int, seconds: float, steps, settle_s, blocker_s):
    pid = studio.process.pid
    flood = MAX_QUEUE + OVERFLOW
    prompts = pick_prompts(max(requests, flood))
    print(f"studio answering at {studio.url} after {studio.ready_s:.1f} s; warming up", flush=True)
    clients = [connect(studio.url, root / "client") for _ in range(max(requests, flood))]  # not timed
    try:
        first, second = warm_up(clients[0], prompts[0], seconds, steps)
        steps = first["steps"]
        cold = settled_rss(pid)
        print(
            f"filling the studio's session store ({SESSION_CAPACITY} clients, one cheap request each)",
            flush=True,
        )
        filled = fill_sessions(studio.url, prompts[0], SESSION_CAPACITY)
        baseline = settled_rss(pid)
        exact_peak = reset_peak_rss(pid)

        with MemorySampler(pid) as memory:
            memory.mark("burst")
            print(f"burst: {requests} concurrent requests, {seconds:g} s at {steps} steps", flush=True)
            t0 = time.perf_counter()
            calls = [_call(prompts[i], seconds, steps, 1000 + i) for i in range(requests)]
            burst = released_together(clients[:requests], calls)
            burst_wall = time.perf_counter() - t0
            memory.mark("between")
            after_burst = settled_rss(pid)

            memory.mark("overflow")
            per_step = step_cost_s(first, second)
            blocker_steps = min(MAX_STEPS, max(2 * steps, math.ceil(blocker_s / per_step)))
            tries = []
            for _ in range(BLOCKER_TRIES):
                print(f"overflow: a {blocker_steps}-step request, then {flood} at once", flush=True)
                info, outcomes = overflow(studio.url, clients[:flood], prompts, seconds, blocker_steps)
                tries.append((info, outcomes))
                taken = sum(o.status != "refused" for o in outcomes)
                if taken <= MAX_QUEUE or blocker_steps == MAX_STEPS:
                    break
                blocker_steps = min(MAX_STEPS, 2 * blocker_steps)  # it ended while the flood came in
            fresh = released_together(clients[:1], [_call(prompts[1], seconds, steps, 9)])[0]
            memory.mark("settle")
            time.sleep(settle_s)
            after = settled_rss(pid)

            # the same burst again, other prompts: a leak grows with every load; a one-time growth (memory the
            # first concurrent requests made the process keep for good) does not grow again
            memory.mark("repeat")
            calls = [_call(prompts[-1 - i], seconds, steps, 2000 + i) for i in range(requests)]
            repeat = released_together(clients[:requests], calls)
            time.sleep(settle_s)
            after_repeat = settled_rss(pid)
        hwm = peak_rss_bytes(pid) if exact_peak else None
    finally:
        for client in clients:
            client.close()

    alive = studio.process.poll() is None
    info, outcomes = tries[-1]
    return {
        "studio": {"url": studio.url, "ready_s": round(studio.ready_s, 1), "model": first.get("model")},
        "settings": {"requests": requests, "seconds": seconds, "steps": steps, "max_queue": MAX_QUEUE},
        "burst": _burst_report(burst, burst_wall),
        "queue": _queue_report(info, outcomes, len(tries), fresh, alive),
        "memory": {
            **_memory_report(memory, baseline, after_burst, after, hwm, settle_s),
            "cold_mib": round(cold / MIB, 1) if cold else None,
            "sessions_filled": filled,
            "session_store_mib": round((baseline - cold) / MIB, 1) if cold and baseline else None,
            "repeat_succeeded": sum(o.status == "ok" for o in repeat),
            "after_repeat_mib": round(after_repeat / MIB, 1) if after_repeat and after else None,
            "repeat_growth_mib": round((after_repeat - after) / MIB, 1) if after_repeat and after else None,
        },
    }


def _burst_report(outcomes: list[Outcome], wall_s: float) -> dict:
    ok = [o.latency_s for o in outcomes if o.status == "ok"]
    latency = (
        {
            "p50": round(percentile(ok, 50), 3),
            "p95": round(percentile(ok, 95), 3),
            "max": round(max(ok), 3),
            "min": round(min(ok), 3),
        }
        if ok
        else None
    )
    return {
        "requests": len(outcomes),
        "succeeded": len(ok),
        "all_succeeded": len(ok) == len(outcomes),
        "latency_s": latency,
        "wall_s": round(wall_s, 2),
        "runs": [asdict(o) | {"latency_s": round(o.latency_s, 3)} for o in outcomes],
    }


def _queue_report(info: dict, outcomes: list[Outcome], tries: int, fresh: Outcome, alive: bool) -> dict:
    count = {s: sum(o.status == s for o in outcomes) for s in ("ok", "refused", "error", "hung")}
    refusals = sorted({o.message for o in outcomes if o.status == "refused"})
    said_full = all("queue is full" in m.lower() for m in refusals)
    held = (
        count["ok"] == MAX_QUEUE
        and count["refused"] == len(outcomes) - MAX_QUEUE
        and count["error"] == count["hung"] == 0
        and said_full
        and fresh.status == "ok"
        and alive
    )
    return {
        "max_queue": MAX_QUEUE,
        "sent": len(outcomes),
        "taken_and_finished": count["ok"],
        "refused": count["refused"],
        "refusal_messages": refusals,
        "other_errors": count["error"],
        "hung": count["hung"],
        "errors": sorted({o.message for o in outcomes if o.status in ("error", "hung")}),
        **info,
        "tries": tries,
        "request_afterwards": {"status": fresh.status, "latency_s": round(fresh.latency_s, 3)},
        "server_alive": alive,
        "held": held,
    }


def _memory_report(memory: MemorySampler, baseline, after_burst, after, hwm, settle_s: float) -> dict:
    sampled = memory.peak()
    peaks = [v for v in (sampled, hwm, baseline) if v is not None]
    peak = max(peaks) if peaks else None
    margin = max(MARGIN_FRACTION * baseline, MARGIN_MIB * MIB) if baseline is not None else None
    returned = after <= baseline + margin if baseline is not None and after is not None else None

    def mib(value):
        return None if value is None else round(value / MIB, 1)

    try:
        import psutil  # noqa: F401

        source = "psutil"
    except ImportError:
        source = "/proc/PID/status"
    return {
        "source": source,
        "baseline_mib": mib(baseline),
        "peak_mib": mib(peak),
        "peak_burst_mib": mib(memory.peak("burst")),
        "peak_overflow_mib": mib(memory.peak("overflow")),
        "peak_is_exact": hwm is not None,  # VmHWM reset at the baseline, not only sampled
        "after_burst_mib": mib(after_burst),
        "after_mib": mib(after),
        "settle_s": settle_s,
        "margin_mib": mib(margin),
        "rule": f"after <= baseline + max({MARGIN_FRACTION:.0%} of baseline, {MARGIN_MIB:g} MiB)",
        "returned_to_baseline": returned,
        "trace_mib": memory.trace(),
    }


def print_table(report: dict) -> None:
    s, b, q, m = report["settings"], report["burst"], report["queue"], report["memory"]

    def mib(value) -> str:
        return "n/a" if value is None else f"{value:.0f} MiB"

    print()
    print(
        f"{s['requests']} concurrent /generate requests through gradio_client, {s['seconds']:g} s at "
        f"{s['steps']} steps, one at a time through the studio's queue (MAX_QUEUE {s['max_queue']}); "
        f"studio ready in {report['studio']['ready_s']:g} s"
    )
    latency = b["latency_s"] or {}
    rows = [
        ("succeeded", f"{b['succeeded']}/{b['requests']}"),
        ("latency p50", f"{latency.get('p50', math.nan):.2f} s"),
        ("latency p95", f"{latency.get('p95', math.nan):.2f} s"),
        ("latency max", f"{latency.get('max', math.nan):.2f} s"),
        ("burst wall time", f"{b['wall_s']:.2f} s"),
        ("RSS, session store empty", mib(m["cold_mib"])),
        (
            f"RSS baseline ({m['sessions_filled']} sessions)",
            mib(m["baseline_mib"]) + f" (the store: {m['session_store_mib']:+.0f} MiB)",
        ),
        ("RSS peak", mib(m["peak_mib"]) + ("" if m["peak_is_exact"] else " (sampled)")),
        ("RSS after burst", mib(m["after_burst_mib"])),
        (f"RSS after {m['settle_s']:g} s idle", mib(m["after_mib"])),
        ("back to baseline", _yes(m["returned_to_baseline"]) + f" (margin {mib(m['margin_mib'])})"),
        ("RSS after the burst again", f"{mib(m['after_repeat_mib'])} ({m['repeat_growth_mib']:+.0f} MiB)"),
        ("queue overflow sent", f"{q['sent']} at once behind a {q['blocker_s']:g} s request"),
        ("  taken, finished", str(q["taken_and_finished"])),
        ("  refused", f"{q['refused']} {q['refusal_messages']}"),
        ("  errors, hung", f"{q['other_errors']}, {q['hung']} {q['errors'] or ''}".rstrip()),
        (
            "  request after",
            f"{q['request_afterwards']['status']} ({q['request_afterwards']['latency_s']:.2f} s)",
        ),
        ("queue held", _yes(q["held"])),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def _yes(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "NO")
