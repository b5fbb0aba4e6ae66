"""Several training processes as one run: the layout a launcher gives, and the few collectives the trainer needs.

torchrun (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT) starts one
process per device; `Layout.from_env()` reads where this one sits, and `ProcessGroup` joins the others
through torch.distributed: gloo for CPU tensors and, where CUDA is present, NCCL for CUDA tensors. With
one process every collective returns its input and nothing is initialised.

Why gradients are averaged here rather than by DistributedDataParallel: DDP syncs the gradients of a
module only through its wrapper's forward, but recipes reach into their modules (the codec's encoder and
decoder, the DiT's prior heads, ARC's generator and discriminator), run a module more than once per loss,
and freeze whole optimizer groups for a step; DDP would need `find_unused_parameters` and still miss
the calls that bypass its forward. `average_gradients` does DDP's arithmetic (the mean over processes
of each gradient) after backward, for whatever parameters the step trained, in a few flat all-reduces.
What it gives up is overlapping that communication with the backward pass.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipelines.errors import BadInput

BUCKET_ELEMENTS = 1 << 25  # at most this many elements (128 MiB of float32) in one flat all-reduce


@dataclass(frozen=True)
class Layout:
    """This process's place in the run: its rank among world_size, and its device index on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Layout:
        """The layout torchrun gives through RANK, WORLD_SIZE and LOCAL_RANK; one process when they are unset."""

        def whole(name: str, default: int) -> int:
            text = env.get(name)
            if text is None:
                return default
            try:
                return int(text)
            except ValueError:
                raise BadInput(
                    f"The environment variable {name} must be a whole number, not '{text}'."
                ) from None

        world_size = whole("WORLD_SIZE", 1)
        if world_size == 1:  # a stray RANK without WORLD_SIZE is no launcher's doing
            return cls()
        rank = whole("RANK", 0)
        local_rank = whole("LOCAL_RANK", rank)
        if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
            raise BadInput(
                f"RANK {rank} and WORLD_SIZE {world_size} in the environment name no process of a run; "
                "start distributed training with torchrun."
            )
        return cls(rank, world_size, local_rank)


def training_device(name: str, layout: Layout) -> torch.device:
    """The torch device of `name` ("cpu", "cuda", "mps") for this process; CUDA is the LOCAL_RANK-th GPU."""
    if name == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if layout.local_rank >= count:
            have = f"only {count} CUDA GPU{'s' if count != 1 else ''}" if count else "no CUDA GPU"
            raise BadInput(
                f"device is cuda but this process (local rank {layout.local_rank}) sees {have}; "
                "start one process per GPU or set device to cpu."
            )
        torch.cuda.set_device(layout.local_rank)
        return torch.device("cuda", layout.local_rank)
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise BadInput(
                "device is mps but this machine has no Apple GPU torch can use; set device to cpu."
            )
        if layout.world_size > 1:
            raise BadInput("torch.distributed cannot run on mps; train on one process or set device to cpu.")
        return torch.device("mps")
    assert name == "cpu", f"unknown device {name!r} (TrainConfig checks it)"
    return torch.device("cpu")


class ProcessGroup:
    """The run's processes as torch.distributed sees them; with one process every call is the identity.

    `open()` joins the others (the launcher's rendezvous) and `close()` leaves, unless someone else set
    torch.distributed up first, in which case it is used as it is. Small values travel as JSON over CPU
    tensors; tensors travel on their own device.
    """

    def __init__(self, layout: Layout):
        self.layout = layout
        self._owned = False

    @property
    def distributed(self) -> bool:
        return self.layout.world_size > 1

    def open(self) -> None:
        if not self.distributed or dist.is_initialized():
            if self.distributed:
                assert dist.get_world_size() == self.layout.world_size, "torch.distributed has another size"
            return
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
        if missing:
            raise BadInput(
                f"WORLD_SIZE is {self.layout.world_size} but {' and '.join(missing)} is not set; "
                "start distributed training with torchrun."
            )
        cuda = torch.cuda.is_available() and dist.is_nccl_available()
        dist.init_process_group(
            "cpu:gloo,cuda:nccl" if cuda else "gloo",
            rank=self.layout.rank,
            world_size=self.layout.world_size,
        )
        self._owned = True

    def settle(self) -> None:
        """Wait until every process has come this far: a run that ended well tears its group down together.
        One rank leaving while another was still in its last collective sometimes aborted that rank as the
        group went away ("terminate called without an active exception", SIGABRT: 2 runs in 15 here, 0 in 15 after)."""
        if self._owned and dist.is_initialized():
            dist.barrier()

    def close(self) -> None:
        if self._owned and dist.is_initialized():
            dist.destroy_process_group()
        self._owned = False

    # ------------------------------------------------------------ small values

    def broadcast_json(self, value):
        """Rank 0's JSON-able `value`, on every process (the others' `value` is ignored)."""
        if not self.distributed:
            return value
        data = json.dumps(value).encode() if self.layout.rank == 0 else b""
        length = torch.tensor([len(data)], dtype=torch.int64)
        dist.broadcast(length, 0)
        buffer = torch.zeros(int(length), dtype=torch.uint8)
        if self.layout.rank == 0:
            buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        dist.broadcast(buffer, 0)
        return json.loads(buffer.numpy().tobytes())

    def gather_json(self, value) -> list:
        """Every process's JSON-able `value`, by rank, on every process."""
        if not self.distributed:
            return [value]
        data = json.dumps(value).encode()
        lengths = [torch.zeros(1, dtype=torch.int64) for _ in range(self.layout.world_size)]
        dist.all_gather(lengths, torch.tensor([len(data)], dtype=torch.int64))
        longest = max(int(n) for n in lengths)
        mine = torch.zeros(longest, dtype=torch.uint8)
        mine[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        gathered = [torch.zeros(longest, dtype=torch.uint8) for _ in range(self.layout.world_size)]
        dist.all_gather(gathered, mine)
        return [json.loads(g[: int(n)].numpy().tobytes()) for g, n in zip(gathered, lengths)]

    def max_ints(self, values: list[int]) -> list[int]:
        """The largest of each position of `values` over every process."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [int(v) for v in t.tolist()]

    def mean(self, value: float) -> float:
        """The mean of `value` over every process."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t) / self.layout.world_size

    # ------------------------------------------------------------ tensors

    def broadcast_tensors_(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite `tensors` (the same shapes and dtypes in every process) with rank 0's, in place."""
        if not self.distributed:
            return
        for bucket in _buckets(tensors):
            flat = _flatten(bucket)
            dist.broadcast(flat, 0)
            if self.layout.rank != 0:
                _unflatten_into(flat, bucket)

    def broadcast_named(self, tensors: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """Rank 0's named tensors (on the CPU), on every process; the others pass None."""
        if not self.distributed:
            assert tensors is not None
            return tensors
        if self.layout.rank == 0:
            tensors = {k: t.detach().cpu() for k, t in tensors.items()}
            header = [[k, str(t.dtype).removeprefix("torch."), list(t.shape)] for k, t in tensors.items()]
        else:
            header = None
        header = self.broadcast_json(header)
        if self.layout.rank != 0:
            tensors = {k: torch.empty(shape, dtype=getattr(torch, dtype)) for k, dtype, shape in header}
        self.broadcast_tensors_(list(tensors.values()))
        return tensors

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        """Replace each parameter's gradient by its mean over every process, as DDP would.

        A parameter without a gradient here (unused by this process's share of the batch) counts as a
        zero gradient when another process has one; without one anywhere, it keeps none, so the optimizer
        leaves it alone exactly as in a one-process run of the whole batch.
        """
        if not self.distributed:
            return
        had = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
        dist.all_reduce(had)
        used = [p for p, n in zip(params, had.tolist()) if n > 0]
        for p in used:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for bucket in _buckets([p.grad for p in used]):
            flat = _flatten(bucket)
            dist.all_reduce(flat)
            flat.div_(self.layout.world_size)
            _unflatten_into(flat, bucket)


def _buckets(tensors: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """`tensors` in runs of one dtype and device, each at most BUCKET_ELEMENTS (or one larger tensor)."""
    by_kind: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        by_kind.setdefault((t.dtype, t.device), []).append(t)
    for group in by_kind.values():
        bucket, size = [], 0
        for t in group:
            if bucket and size + t.numel() > BUCKET_ELEMENTS:
                yield bucket
                bucket, size = [], 0
            bucket.append(t)
            size += t.numel()
        if bucket:
            yield bucket


def _flatten(bucket: list[torch.Tensor]) -> torch.Tensor:
    # bool travels as uint8: not every backend reduces or broadcasts bool
    return torch.cat([(t.to(torch.uint8) if t.dtype == torch.bool else t).reshape(-1) for t in bucket])


def _unflatten_into(flat: torch.Tensor, bucket: list[torch.Tensor]) -> None:
    offset = 0
    for t in bucket:
        part = flat[offset : offset + t.numel()].view(t.shape)
        t.copy_(part.to(torch.bool) if t.dtype == torch.bool else part)
        offset += t.numel()
