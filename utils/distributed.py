"""All distributed plumbing: launcher detection, init, collectives, with torch.distributed or horovod.

The launcher sets the ranks: torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), horovodrun
(``HOROVOD_RANK``/``HOROVOD_SIZE``/``HOROVOD_LOCAL_RANK``, or Open MPI's ``OMPI_COMM_WORLD_*``) or SLURM's
srun (``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``). With one process nothing is initialised and
every collective is a no-op, so training on one GPU or CPU needs neither NCCL nor horovod.

Which back end is active is read from the libraries themselves (``torch.distributed.is_initialized()``,
``horovod.torch.is_initialized()``), so this module keeps no state of its own.

A rank that dies makes the others fail instead of hanging: collectives run under the process group's
timeout (``timeout_s``), and a failed collective raises :class:`DistributedError` naming this rank and the
operation, which ends the process with a non-zero status.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterable, TypeVar

import torch
import torch.distributed as dist

from utils.errors import DistributedError

T = TypeVar("T")
DEFAULT_BUCKET_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    world_size: int
    rank: int
    local_rank: int
    launcher: str  # "torchrun", "horovod", "slurm" or "none"


def _env_int(env: dict[str, str], *names: str) -> int | None:
    for name in names:
        if env.get(name, "") != "":
            return int(env[name])
    return None


def detect_launcher(env: dict[str, str] | None = None) -> DistInfo:
    """Ranks from the launcher's environment variables (single process when none is set)."""
    env = dict(os.environ if env is None else env)
    if "WORLD_SIZE" in env and "RANK" in env:
        return DistInfo(int(env["WORLD_SIZE"]), int(env["RANK"]), _env_int(env, "LOCAL_RANK") or 0, "torchrun")
    hvd_size = _env_int(env, "HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE")
    if hvd_size is not None:
        return DistInfo(hvd_size, _env_int(env, "HOROVOD_RANK", "OMPI_COMM_WORLD_RANK") or 0,
                        _env_int(env, "HOROVOD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK") or 0, "horovod")
    slurm_size = _env_int(env, "SLURM_NTASKS")
    if slurm_size is not None and slurm_size > 1:
        return DistInfo(slurm_size, _env_int(env, "SLURM_PROCID") or 0, _env_int(env, "SLURM_LOCALID") or 0,
                        "slurm")
    return DistInfo(1, 0, 0, "none")


def _hvd() -> Any | None:
    """The horovod.torch module when it has been initialised in this process, else None (never imports it)."""
    hvd = sys.modules.get("horovod.torch")
    return hvd if hvd is not None and hvd.is_initialized() else None


def backend_name() -> str:
    """'torch', 'horovod' or 'none' (single process)."""
    if dist.is_available() and dist.is_initialized():
        return "torch"
    return "horovod" if _hvd() is not None else "none"


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the job the launcher started: NCCL on CUDA, gloo on CPU, horovod under horovodrun.

    ``backend`` forces "nccl", "gloo" or "horovod". A single process initialises nothing.
    """
    info = detect_launcher()
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank % max(torch.cuda.device_count(), 1))
    if info.world_size == 1 and backend is None:
        return info
    if backend == "horovod" or (backend is None and info.launcher == "horovod"):
        return _init_horovod(info)
    if info.launcher == "slurm":
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise DistributedError(f"SLURM launch: set {var} (e.g. the first node's host name / a free port)")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    kwargs = {}
    if backend == "nccl":
        kwargs["device_id"] = torch.device("cuda", torch.cuda.current_device())
    dist.init_process_group(backend, init_method="env://", rank=info.rank, world_size=info.world_size,
                            timeout=timedelta(seconds=timeout_s), **kwargs)
    return info


def _init_horovod(info: DistInfo) -> DistInfo:
    try:
        import horovod.torch as hvd  # optional: only present where scripts/build_horovod.sh was run
    except ImportError as exc:
        raise DistributedError("launched by horovodrun but horovod.torch is not importable "
                               "(build it with scripts/build_horovod.sh, or launch with torchrun)") from exc
    hvd.init()
    return DistInfo(hvd.size(), hvd.rank(), hvd.local_rank(), "horovod")


def shutdown() -> None:
    """Leave the process group (torch back end); harmless when none is active."""
    if backend_name() == "torch":
        dist.destroy_process_group()


def get_world_size() -> int:
    name = backend_name()
    return dist.get_world_size() if name == "torch" else _hvd().size() if name == "horovod" else 1


def get_rank() -> int:
    name = backend_name()
    return dist.get_rank() if name == "torch" else _hvd().rank() if name == "horovod" else 0


def is_main() -> bool:
    """True on rank 0 (the rank that logs and writes files)."""
    return get_rank() == 0


def _guard(what: str, fn: Callable[[], T]) -> T:
    """Run a collective; turn a back-end failure into a clear error instead of a cryptic one."""
    try:
        return fn()
    except Exception as exc:  # gloo/NCCL raise RuntimeError/DistBackendError, horovod HorovodInternalError
        raise DistributedError(
            f"rank {get_rank()}/{get_world_size()}: {what} failed; another rank probably died or did not "
            f"reach it within the timeout ({type(exc).__name__}: {exc})") from exc


def barrier() -> None:
    """Wait for every rank."""
    name = backend_name()
    if name == "torch":
        _guard("barrier", dist.barrier)
    elif name == "horovod":
        _guard("barrier", lambda: _hvd().allreduce(torch.zeros(1), name="barrier"))


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks."""
    name = backend_name()
    if name == "torch":
        _guard("all_reduce", lambda: dist.all_reduce(tensor, op=dist.ReduceOp.SUM))
    elif name == "horovod":
        hvd = _hvd()
        _guard("allreduce", lambda: hvd.allreduce_(tensor, op=hvd.Sum))
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (returns a new tensor; the input is unchanged)."""
    out = tensor.detach().clone()
    world = get_world_size()
    if world > 1:
        all_reduce_sum_(out)
        out /= world
    return out


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order."""
    name = backend_name()
    if name == "torch":
        out: list[Any] = [None] * dist.get_world_size()
        _guard("all_gather_object", lambda: dist.all_gather_object(out, obj))
        return out
    if name == "horovod":
        return _guard("allgather_object", lambda: _hvd().allgather_object(obj))
    return [obj]


def broadcast_params(model: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank, so all start identical."""
    name = backend_name()
    if name == "none":
        return
    for key, tensor in model.state_dict().items():
        if name == "torch":
            _guard(f"broadcast of {key}", lambda t=tensor: dist.broadcast(t, src=src))
        else:
            _guard(f"broadcast of {key}", lambda t=tensor, k=key: _hvd().broadcast_(t, root_rank=src, name=k))


def _buckets(params: list[torch.nn.Parameter], bucket_bytes: int) -> Iterable[list[torch.nn.Parameter]]:
    """Consecutive groups of parameters with one device and dtype, each up to ``bucket_bytes``."""
    bucket: list[torch.nn.Parameter] = []
    size = 0
    for p in params:
        nbytes = p.numel() * p.element_size()
        if bucket and (size + nbytes > bucket_bytes or (p.device, p.dtype) != (bucket[0].device, bucket[0].dtype)):
            yield bucket
            bucket, size = [], 0
        bucket.append(p)
        size += nbytes
    if bucket:
        yield bucket


def all_reduce_grads(params: Iterable[torch.nn.Parameter], bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
    """Average ``.grad`` over ranks in flat buckets.

    A missing grad counts as zeros, so every rank issues the same collectives. One extra element per
    parameter carries "had a grad"; a parameter no rank touched keeps ``grad = None`` (as with one process,
    so the optimizer skips it the same way), one touched anywhere gets the averaged grad on every rank.
    """
    world = get_world_size()
    if world == 1:
        return
    params = [p for p in params if p.requires_grad]
    for bucket in _buckets(params, bucket_bytes):
        ref = bucket[0]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in bucket]
                         + [torch.tensor([p.grad is not None for p in bucket], dtype=ref.dtype, device=ref.device)])
        all_reduce_sum_(flat)
        flat[:-len(bucket)] /= world
        touched = flat[-len(bucket):].tolist()  # one device sync per bucket, not per parameter
        offset = 0
        for p, had_grad in zip(bucket, touched):
            n = p.numel()
            if had_grad > 0:
                grad = flat[offset:offset + n].view_as(p)
                if p.grad is None:
                    p.grad = grad.clone()
                else:
                    p.grad.copy_(grad)
            offset += n
