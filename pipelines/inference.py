"""How the generator's DiT runs at inference: precision (bf16, int8), torch.compile, threads and device.

    load_generator(bundle, bf16=None, int8=False, compile=False, threads=None, device="cpu")

- bf16: the DiT is sampled from a bf16 copy (about 30% faster than autocast on CPU, which casts the weights
  again at every call); the control skip's lines stay float32. The codec decodes in bf16 too. None (the
  default) means bf16 where the device multiplies bf16 natively (`native_bf16`), else float32: on a CPU
  with AMX, bf16 matmuls ran ~5x faster than float32, but on one with AVX2 only (an AMD EPYC here) they
  ran ~6x slower (10 against 62-75 GFLOP/s at the DiT's shapes), and 12 s took 3.0 s in bf16 against
  0.74 s in float32 (`soundloom bench generate --options`, README).
- int8: the DiT blocks' attention and MLP linear layers (nearly all of its matmul work) are dynamically
  quantised to int8 (torch.ao: int8 weights, activations quantised per call). Those kernels take float32
  input only, so an int8 DiT runs in float32 around its int8 matmuls whatever bf16 says (bf16 still sets
  the codec's precision). The embedders, adaLN and final layers stay float32. CPU only. Whether it keeps
  the quality is for `soundloom eval --int8` to say, not for this module to assume.
- compile: torch.compile of the sampling DiT (inductor; needs a C++ compiler on CPU). Compiling happens at
  the first call (tens of seconds) and again at each new shape; if compiling or the compiled model fails,
  sampling goes on uncompiled after one warning.
- threads: torch.set_num_threads(threads) when the generator is made. It is the process's setting, so it
  also holds for everything else the process runs afterwards.
- device: where the DiT samples (cpu, cuda, mps). Inputs move there and velocities come back at every
  step, so samplers, pipelines and the codec (which decodes on the CPU) are unchanged. Only the CPU is
  tested here; an absent device is refused in one sentence.
"""

from __future__ import annotations

import copy
import functools
import os
import warnings
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from pipelines.errors import BadInput

DEVICES = ("cpu", "cuda", "mps")
INT8_LAYERS = ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")  # per DiT block: where its matmul time goes
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of x86 CPUs that multiply bf16 natively
BF16_ENV = "SOUNDLOOM_BF16"  # "1" or "0" overrides native_bf16 (a CPU it misjudges; tests)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none: macOS, Windows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: str = "cpu") -> bool:
    """Whether `device` multiplies bf16 natively, so bf16 is the fast precision there: a CPU with AMX or
    AVX512-BF16 (its flags), a CUDA GPU that supports bf16; not MPS, and not a CPU that lacks the flags or
    whose flags cannot be read, where bf16 is emulated and slower than float32. A flag, not a timing, so
    the choice (and with it a seed's exact output) does not change with the machine's load.
    SOUNDLOOM_BF16=1 or 0 overrides it."""
    forced = os.environ.get(BF16_ENV, "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    if device == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device == "mps":
        return False
    return bool(cpu_flags() & set(BF16_CPU_FLAGS))


@dataclass(frozen=True)
class InferenceOptions:
    """The generator's inference options (see the module docstring); `check()` refuses bad ones."""

    bf16: bool | None = None  # None: native_bf16(device)
    int8: bool = False
    compile: bool = False
    threads: int | None = None
    device: str = "cpu"

    def check(self) -> InferenceOptions:
        """These options checked, with bf16 decided (None -> native_bf16(device)); BadInput for bad ones."""
        for name in ("bf16", "int8", "compile"):
            if not isinstance(getattr(self, name), bool) and not (name == "bf16" and self.bf16 is None):
                raise BadInput(
                    f"The inference option {name} must be True or False, not {getattr(self, name)!r}."
                )
        cpus = os.cpu_count() or 1
        threads = self.threads
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise BadInput(
                f"threads must be a whole number of at least 1 (this machine has {cpus} CPUs), not {threads!r}."
            )
        if self.device not in DEVICES:
            raise BadInput(f"Unknown device {self.device!r}; use one of {', '.join(DEVICES)}.")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise BadInput(
                f"This machine has no CUDA GPU that torch {torch.__version__} can use; use --device cpu."
            )
        if self.device == "mps" and not torch.backends.mps.is_available():
            raise BadInput("This machine has no Apple MPS device that torch can use; use --device cpu.")
        if self.int8 and self.device != "cpu":
            raise BadInput(
                f"int8 runs on the CPU only (dynamic quantisation has no {self.device} kernels); drop --int8 "
                "or use --device cpu."
            )
        return self if self.bf16 is not None else replace(self, bf16=native_bf16(self.device))

    @property
    def changed(self) -> dict:
        """The options that differ from the defaults on this machine (what a report needs to say)."""
        default = replace(InferenceOptions(), bf16=native_bf16(self.device))
        return {k: v for k, v in asdict(self).items() if v != getattr(default, k)}

    @property
    def label(self) -> str:
        """A short name: 'bf16', 'fp32', 'int8', plus '+compile', '+N threads', '@cuda' where set."""
        name = "int8" if self.int8 else "bf16" if self.bf16 else "fp32"
        if self.compile:
            name += "+compile"
        if self.threads is not None:
            name += f"+{self.threads} thread{'s' * (self.threads != 1)}"
        return name if self.device == "cpu" else f"{name}@{self.device}"


def apply_threads(options: InferenceOptions) -> None:
    if options.threads is not None:
        torch.set_num_threads(options.threads)


def sampling_model(dit: nn.Module, options: InferenceOptions):
    """The callable the samplers run, model(x, t, **inputs) -> velocity (float32, on the CPU): `dit` itself
    when the options change nothing, else a copy made as the options say (`dit` stays as it is)."""
    model = dit
    if options.int8:
        model = int8_copy(dit)
    elif options.bf16:
        model = bf16_copy(dit)
    if options.device != "cpu":
        model = (copy.deepcopy(model) if model is dit else model).to(options.device)
    if options.compile:
        model = CompiledOrEager(model)
    if options.device != "cpu":
        model = OnDevice(model, torch.device(options.device))
    return model


def bf16_copy(dit: nn.Module) -> nn.Module:
    """A bf16 copy; a DiT's control skip lines stay float32 (bf16 would put notes ~5 cents off)."""
    out = copy.deepcopy(dit).to(torch.bfloat16).eval()
    if getattr(getattr(dit, "cfg", None), "x0_channels", 0):
        out.control_skip.data = dit.control_skip.detach().float().clone()
    return out


def int8_copy(dit: nn.Module) -> nn.Module:
    """A float32 copy whose blocks' attention and MLP linear layers are dynamically quantised to int8."""
    names = {
        name
        for name, module in dit.named_modules()
        if isinstance(module, nn.Linear) and name.startswith("blocks.") and name.endswith(INT8_LAYERS)
    }
    assert names, "no DiT block linear layers to quantise"
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; its eager dynamic quantisation still works
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(copy.deepcopy(dit).float().eval(), names, dtype=torch.qint8)


class CompiledOrEager:
    """torch.compile of a model that falls back to the model itself, after one warning, when compiling or
    running the compiled model fails (no C++ compiler, an operator or platform inductor does not cover)."""

    def __init__(self, model):
        self.model = model
        self.compiled = None
        self.failure: str | None = None
        try:
            self.compiled = torch.compile(model)
        except Exception as e:  # whatever stops compiling, eager still works
            self._fall_back(e)

    def __call__(self, *args, **kwargs):
        if self.compiled is None:
            return self.model(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as e:
            out = self.model(*args, **kwargs)  # an error of the inputs themselves raises here, unwarned
            self._fall_back(e)
            return out

    def _fall_back(self, error: Exception) -> None:
        self.compiled = None
        self.failure = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        warnings.warn(
            f"torch.compile could not compile the DiT ({self.failure}); sampling runs uncompiled.",
            stacklevel=3,
        )


class OnDevice:
    """A model on another device called with CPU tensors: inputs go there, the output comes back."""

    def __init__(self, model, device: torch.device):
        self.model = model
        self.device = device

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **inputs) -> torch.Tensor:
        moved = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        return self.model(x.to(self.device), t.to(self.device), **moved).float().cpu()
