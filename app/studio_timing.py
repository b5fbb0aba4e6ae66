"""Time the studio as a user meets it, in Debian's Chromium (headless, through Playwright):

    python -m app.studio_timing [--model BUNDLE] [--screenshot assets/studio.png]

- cold start: from launching `soundloom studio` to a page with a usable prompt box (Chromium's own start
  included);
- click to audio: from clicking Generate to the take's audio element having a source, for a 4 s sound at the
  bundle's defaults (the page is reloaded between prompts, so every take is a fresh player; the first click
  also waits for the model, which the studio loads in the background once the page is up).

Prints the figures; the screenshot is of the Generate tab after the last take.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from app.browser import CHROMIUM, free_port, launch_chromium

PROMPTS = (
    "a warm cello note, A3, slow bow",
    "heavy rain on a tin roof",
    "a soft pad chord",
    "breathy flute tone on G5",
)
TIMEOUT_S = 120.0


def wait_until_served(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"soundloom studio exited with code {proc.returncode} before serving")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"soundloom studio did not answer at {url} within {TIMEOUT_S:g} s")


def measure(model: str | None, screenshot: Path | None) -> dict:
    from playwright.sync_api import sync_playwright

    url = f"http://127.0.0.1:{free_port()}/"
    port = url.rsplit(":", 1)[1].strip("/")
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    argv = [sys.executable, "-m", "app", "studio", "--port", port, "--no-browser"]
    argv += ["--outputs", tempfile.mkdtemp(prefix="studio-timing-")] + (["--model", model] if model else [])
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_served(url, proc)
        with sync_playwright() as p:
            browser = launch_chromium(p)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(url)
                page.locator("#prompt textarea").wait_for()
                cold_start_s = time.perf_counter() - started
                clicks = []
                for i, prompt in enumerate(PROMPTS):
                    if i:
                        page.reload()
                        page.locator("#prompt textarea").wait_for()
                    page.locator("#prompt textarea").fill(prompt)
                    page.locator("#generate").click()
                    clicked = time.perf_counter()
                    # polled every 10 ms: Playwright's own wait backs off to 1 s between checks and read 0.80 s
                    # for takes that the 10 ms poll saw arrive in 0.41-0.46 s
                    audio = page.locator("#take-1 audio[src]")
                    while not audio.count():
                        if time.perf_counter() - clicked > TIMEOUT_S:
                            raise RuntimeError(f"no audio {TIMEOUT_S:g} s after clicking Generate")
                        page.wait_for_timeout(10)
                    clicks.append(time.perf_counter() - clicked)
                if screenshot is not None:
                    page.get_by_text("waveform and spectrogram").wait_for()
                    page.wait_for_timeout(800)
                    screenshot.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(screenshot))
            finally:
                browser.close()
    finally:
        proc.terminate()
        proc.wait()
    return {"cold_start_s": cold_start_s, "click_to_audio_s": clicks}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="generator bundle (default: the bundled one)")
    parser.add_argument("--screenshot", type=Path, help="save a screenshot of the Generate tab here")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"error: {CHROMIUM} is missing; install Debian's chromium.", file=sys.stderr)
        return 2
    r = measure(args.model, args.screenshot)
    first, *warm = r["click_to_audio_s"]
    print(f"cold start to a usable page: {r['cold_start_s']:.2f} s (Chromium's start included)")
    print(
        f"click to audio, 4 s: first {first:.2f} s (waits for the model), then "
        + ", ".join(f"{c:.2f}" for c in warm)
        + " s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
