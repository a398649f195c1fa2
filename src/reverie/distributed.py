"""Many processes, one result: the rows of a batch sharded over a ``torch.distributed`` process
group (gloo on CPU, NCCL on GPU), gathered back in order on every rank.

Every reverie output row depends only on its own seed (one generator per sample or row, see
:mod:`reverie._random`), so a row is computed the same way whichever rank draws it: the
gathered result equals the single-process one, bitwise, whatever the world size. Ranks take
contiguous shards (the first ``n % world`` ranks one row more); a rank with no rows still joins
every collective, so ``world > n`` does not hang. Collectives wait at most the group's timeout
(``init_process_group(timeout=...)``; :func:`init_from_env` sets :data:`TIMEOUT`).

Used by ``reverie.sample(..., distributed=True)``, ``reverie.discrete.generate(...,
distributed=True)`` and the command line under ``torchrun`` (see docs/distributed.md).

Particle methods (FK steering, TDS, MCGdiff) split one population over the ranks with a
:class:`Population`: the network runs on each rank's particles, the log-weights are gathered,
every rank computes the same ancestor indices from its copy of the shared generator, and the
chosen particles are exchanged, so ``world`` ranks of ``K`` particles are one population of
``world * K``, not ``world`` independent ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor

from reverie._checks import UserError

__all__ = [
    "TIMEOUT",
    "is_initialized",
    "rank",
    "world_size",
    "is_main",
    "require_group",
    "shard",
    "agree",
    "gather_rows",
    "gather_objects",
    "map_rows",
    "fingerprint",
    "launched_by_torchrun",
    "init_from_env",
    "launched",
    "sample",
    "generate",
    "log_likelihood",
    "global_max",
    "search",
    "solve",
    "Population",
    "agree_generators",
    "received_bytes",
]

#: How long a collective waits for the other ranks before failing (a dead rank never hangs a job).
TIMEOUT = timedelta(seconds=float(os.environ.get("REVERIE_DIST_TIMEOUT", "300")))

_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# attributes through which denoisers and models hold their network (a bound method: __self__)
_HOLDERS = ("net", "network", "model", "fn", "denoiser", "__self__")


def is_initialized() -> bool:
    """Whether a default ``torch.distributed`` process group exists."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return torch.distributed.get_rank() if is_initialized() else 0


def world_size() -> int:
    """The number of ranks (1 without a process group)."""
    return torch.distributed.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Rank 0 (or no process group): the one process that prints, shows progress and writes."""
    return rank() == 0


def require_group(what: str) -> None:
    """Raise a one-line error when ``what`` asks for ``distributed=True`` without a group."""
    if not is_initialized():
        raise UserError(
            f"{what}(distributed=True) needs an initialised torch.distributed process group "
            "(launch with torchrun, or call torch.distributed.init_process_group('gloo') first); "
            "none is initialised"
        )


def shard(n: int, rank_: int | None = None, world: int | None = None) -> range:
    """The contiguous rows ``range(lo, hi)`` of ``n`` that rank ``rank_`` of ``world`` takes:
    the first ``n % world`` ranks take one row more; a rank past ``n`` takes none."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    base, extra = divmod(n, w)
    lo = r * base + min(r, extra)
    return range(lo, lo + base + (r < extra))


def _all_gather_object(obj: Any) -> list[Any]:
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def agree(value: Any, what: str) -> None:
    """Check that every rank passes the same ``value`` (e.g. the model's :func:`fingerprint`,
    the number of rows); a mismatch is a :class:`~reverie.UserError` that names the ranks."""
    values = _all_gather_object(value)
    if any(v != values[0] for v in values):
        by_rank = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
        raise UserError(f"the ranks disagree on {what} ({by_rank}); every rank must run the "
                        "same call")


def _comm_device() -> torch.device:
    """Where tensors must live for the group's backend (NCCL: this rank's GPU)."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(x: Tensor | None, device: str | torch.device = "cpu") -> Tensor:
    """Concatenate every rank's rows, in rank order, on every rank (``None``: a rank with no
    rows). Rows are sent as one padded ``all_gather`` of the largest shard; the result is on
    ``device``."""
    meta = None if x is None or len(x) == 0 else (len(x), tuple(x.shape[1:]), str(x.dtype))
    metas = _all_gather_object(meta)
    kinds = {m[1:] for m in metas if m is not None}
    if len(kinds) != 1:  # no rows anywhere, or ranks with rows of different shapes / dtypes
        raise UserError(f"cannot gather rows of different shapes or dtypes: {sorted(kinds)}")
    tail, dtype_name = kinds.pop()
    dtype = getattr(torch, dtype_name.removeprefix("torch."))
    counts = [0 if m is None else m[0] for m in metas]
    buf = torch.zeros((max(counts), *tail), dtype=dtype, device=_comm_device())
    if x is not None and len(x):
        buf[: len(x)] = x.detach()
    bufs = [torch.empty_like(buf) for _ in counts]
    torch.distributed.all_gather(bufs, buf)
    return torch.cat([b[:c] for b, c in zip(bufs, counts)]).to(device)


def gather_objects(items: Sequence[Any]) -> list[Any]:
    """Concatenate every rank's list of picklable ``items``, in rank order, on every rank."""
    return [item for part in _all_gather_object(list(items)) for item in part]


def map_rows(
    fn: Callable[[int, int], Tensor], n: int, device: str | torch.device = "cpu"
) -> Tensor:
    """Run ``fn(lo, hi)`` on this rank's shard of ``n`` rows (not at all on an empty shard) and
    return every rank's rows concatenated, on every rank."""
    rows = shard(n)
    out = fn(rows.start, rows.stop) if len(rows) else None
    return gather_rows(out, device)


def fingerprint(obj: Any) -> tuple[int, float] | None:
    """A cheap identity of the weights behind ``obj`` (a module, or a denoiser / model that
    holds one, see ``_HOLDERS``): parameter count and float64 sum; ``None`` when no module is
    found. Ranks compare it with :func:`agree`."""
    for _ in range(5):  # guidance -> denoiser -> its function -> the module
        if isinstance(obj, torch.nn.Module):
            with torch.no_grad():
                params = list(obj.parameters())
                total = sum(float(p.detach().double().sum()) for p in params)
            return sum(p.numel() for p in params), total
        obj = next((getattr(obj, a) for a in _HOLDERS if hasattr(obj, a)),
                   None)
        if obj is None:
            return None
    return None


# ---------------------------------------------------------------------------------------------
# The launcher: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR / MASTER_PORT)
# ---------------------------------------------------------------------------------------------


def launched_by_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (its environment variables are set)."""
    return all(k in os.environ for k in _TORCHRUN_ENV)


def init_from_env(device: str | None = None, timeout: timedelta = TIMEOUT) -> bool:
    """Initialise the default process group from torchrun's environment: NCCL when ``device``
    is a CUDA device (each rank on ``cuda:LOCAL_RANK``), else gloo; collectives time out after
    ``timeout``. Returns whether a group was created (False: not under torchrun, or one exists)."""
    if is_initialized() or not launched_by_torchrun():
        return False
    cuda = device is not None and str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    return True


@contextmanager
def launched(device: str | None = None) -> Iterator[bool]:
    """Around a command: the process group of a torchrun launch (yields whether there is one),
    destroyed afterwards."""
    created = init_from_env(device)
    try:
        yield is_initialized()
    finally:
        if created:
            torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# The distributed forms of the entry points (called by them with distributed=True)
# ---------------------------------------------------------------------------------------------


def _per_row(generator: Any, n: int, what: str, allow_none: bool) -> list[Any] | None:
    """The per-row generator list (or None where that is allowed), with a clear error."""
    if generator is None and allow_none:
        return None
    if isinstance(generator, torch.Generator) or generator is None:
        got = "one shared generator" if generator is not None else "generator=None"
        raise UserError(
            f"{what}(distributed=True) needs one generator per row "
            f"(reverie.seeded_generators(seed, n)) so that a row does not depend on the rank "
            f"that draws it; got {got}"
        )
    gens = list(generator)
    if len(gens) != n:
        raise UserError(f"{what}: got {len(gens)} generators for {n} rows; pass one per row")
    return gens


def sample(
    fn: Callable[..., Tensor],
    denoiser: Any,
    noise: Tensor,
    generator: Any,
    stochastic: bool,
    cond: Mapping[str, Any] | None,
    progress: bool,
    kwargs: dict[str, Any],
) -> Tensor:
    """``reverie.sample(..., distributed=True)``: each rank samples its shard of the rows of
    ``noise`` with their generators (and the rows of ``cond`` tensors with the batch first);
    the samples are gathered on every rank. ``fn`` is the single-process ``reverie.sample``."""
    require_group("reverie.sample")
    n = len(noise)
    gens = _per_row(generator, n, "reverie.sample", allow_none=not stochastic)
    agree((n, tuple(noise.shape), str(noise.dtype), fingerprint(denoiser)),
          "the number / shape of the samples or the model's weights")

    def run(lo: int, hi: int) -> Tensor:  # per-sample conditioning is sharded too
        return fn(denoiser, noise[lo:hi], generator=None if gens is None else gens[lo:hi],
                  cond=_shard_cond(cond, n, slice(lo, hi)), progress=progress and is_main(),
                  **kwargs)

    return map_rows(run, n, noise.device)


def _shard_cond(cond: Mapping[str, Any] | None, n: int, index: Any) -> dict[str, Any]:
    """``cond`` for the rows ``index``: tensors with the batch first are indexed, the rest kept."""
    return {k: v[index] if isinstance(v, Tensor) and v.ndim and len(v) == n else v
            for k, v in (cond or {}).items()}


def global_max(norms: Tensor) -> float:
    """The largest of every rank's ``norms`` (0 for a rank with none; NaN if any rank has one):
    the batch norm of an adaptive solver whose batch is split over the ranks."""
    local = norms.max() if norms.numel() else norms.new_zeros(())
    flags = torch.stack([local.double(), local.isnan().double()]).to(_comm_device())
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    return math.nan if flags[1] > 0 else float(flags[0])


def log_likelihood(
    fn: Callable[..., Any],
    denoiser: Any,
    x: Tensor,
    generator: Any,
    cond: Mapping[str, Any] | None,
    return_info: bool,
    kwargs: dict[str, Any],
) -> Any:
    """``reverie.likelihood.log_likelihood(..., distributed=True)``: each rank integrates its
    rows of ``x``; the adaptive solver's error norm is the maximum over every rank's rows
    (:func:`global_max`), so all ranks take the single-process run's steps and the gathered
    result is its result. A rank with no rows integrates row 0 in lockstep, leaves it out of
    the norm and drops it. Hutchinson probes need one generator per row."""
    require_group("reverie.likelihood.log_likelihood")
    n = len(x)
    hutchinson = kwargs["divergence"] == "hutchinson"
    gens = _per_row(generator, n, "log_likelihood", allow_none=False) if hutchinson else None
    agree((n, tuple(x.shape), str(x.dtype), fingerprint(denoiser)),
          "the data's shape or the model's weights")
    rows = shard(n)
    real = len(rows)
    index = list(rows) or [0]  # an empty rank still takes every step with the others
    res = fn(denoiser, x[index], generator=None if gens is None else [gens[i] for i in index],
             cond=_shard_cond(cond, n, index), return_info=True,
             _reduce=lambda norms: global_max(norms[:real]), **kwargs)
    ll, prior, delta, x_T = (gather_rows(t[:real] if real else None, x.device) for t in
                             (res.log_likelihood, res.prior, res.delta, res.x_T))
    if not return_info:
        return ll
    return dataclasses.replace(res, log_likelihood=ll, prior=prior, delta=delta, x_T=x_T)


def generate(fn: Callable[..., Any], args: dict[str, Any], prompts: list[Tensor], fill: int,
             output: Callable[..., Any]) -> Any:
    """``reverie.discrete.generate(..., distributed=True)``: the prompt rows (and per-row
    generators and constraints) are sharded over the ranks, each rank runs ``fn`` (the
    single-process ``generate``) on its rows, and the canvases are gathered on every rank,
    left padded to the widest one exactly as one process pads them (rows of different widths
    come from ragged prompts with ``max_new_tokens``). ``prompts`` -- the validated prompt
    rows, ``fill`` -- the left-padding id, ``output`` -- ``GenerationOutput`` (all three from
    ``generate``, which this module does not import). ``return_stats``: tokens
    and texts are gathered, ``nfe`` and ``row_evals`` summed, ``steps`` the largest of the
    ranks'."""
    require_group("reverie.discrete.generate")
    model = args["model"]
    if args.get("stream"):
        raise UserError("generate(distributed=True) cannot stream (stream=True) yet")
    if hasattr(model, "generate_canvases"):
        raise UserError(f"generate(distributed=True) does not support {type(model).__name__} "
                        "(a model with its own canvas loop) yet")
    n = len(prompts)
    gens = _per_row(args["generator"], n, "reverie.discrete.generate", allow_none=False)
    constraint = args["constraint"]
    per_row = isinstance(constraint, (list, tuple))  # one constraint per row
    agree((n, [len(p) for p in prompts], fingerprint(model)),
          "the prompts or the model's weights")
    rows = shard(n)
    out = None
    if len(rows):
        lo, hi = rows.start, rows.stop
        part = {**args, "prompt": [list(map(int, p)) for p in prompts[lo:hi]], "n": 1,
                "generator": gens[lo:hi], "chat": False,
                "constraint": list(constraint[lo:hi]) if per_row else constraint,
                "progress": args["progress"] and is_main()}
        out = fn(**part)
    tokens = out.tokens if args["return_stats"] and out is not None else out
    widths = _all_gather_object(0 if tokens is None else tokens.shape[1])
    if tokens is not None and tokens.shape[1] < max(widths):  # left pad as one process does
        left = torch.full((len(tokens), max(widths) - tokens.shape[1]), fill, dtype=tokens.dtype,
                          device=tokens.device)
        tokens = torch.cat([left, tokens], 1)
    device = torch.device(getattr(model, "device", "cpu"))
    tokens = gather_rows(tokens, device)
    if not args["return_stats"]:
        return tokens
    stats = _all_gather_object(None if out is None else (out.nfe, out.row_evals, out.steps,
                                                         out.texts))
    done = [s for s in stats if s is not None]
    texts = None if done[0][3] is None else [t for s in done for t in s[3]]
    return output(tokens, sum(s[0] for s in done), sum(s[1] for s in done),
                  max(s[2] for s in done), texts)


def search(fn: Callable[..., Any], args: dict[str, Any], n: int, generator: Any,
           result: Callable[..., Any]) -> Any:
    """``reverie.search.run(..., distributed="samples")``: each rank runs ``fn`` (the
    single-process ``run``, with ``args``) on its shard of the ``n`` returned samples and their
    generators; samples and rewards are gathered on every rank, ``nfe`` is the largest and
    ``nfe_total`` the sum of the ranks'; ``info`` is the first rank's, with ``network_rows``
    summed, per-sample means (``*_mean``) averaged over all samples (equal to one process's
    up to rounding) and ``ranks`` added. ``result`` -- ``SearchResult``."""
    require_group("reverie.search.run")
    gens = _per_row(generator, n, "reverie.search.run", allow_none=False)
    agree((n, args["method"], args["budget"], fingerprint(args["denoiser"])),
          "the search (n, method, budget) or the model's weights")
    rows = shard(n)
    res = fn(**args, n=len(rows), generator=gens[rows.start:rows.stop]) if len(rows) else None
    samples = gather_rows(None if res is None else res.samples)
    rewards = gather_rows(None if res is None else res.rewards)
    parts = [p for p in _all_gather_object(None if res is None else (
        res.nfe, res.nfe_total, res.info, len(rows))) if p]
    info = {**parts[0][2], "ranks": world_size(),
            "network_rows": sum(p[2].get("network_rows", 0) for p in parts)}
    for key, value in parts[0][2].items():  # per-sample means: weighted by the ranks' rows
        if key.endswith("_mean") and isinstance(value, float):
            info[key] = sum(p[2][key] * p[3] for p in parts) / n
    return result(samples, rewards, max(p[0] for p in parts), sum(p[1] for p in parts),
                  args["method"], args["budget"], info)


def solve(fn: Callable[..., Any], args: dict[str, Any], y: Tensor, generator: Any) -> Any:
    """``reverie.inverse.solve(..., distributed=True)`` for a method without particles: each
    rank runs ``fn`` (the single-process ``solve``, with ``args``) on its shard of the ``n``
    measurement rows ``y`` and their generators; the samples (and per-row tensors of
    ``extra``) are gathered on every rank. Returns the ``InverseResult``."""
    require_group("reverie.inverse.solve")
    n = len(y)
    gens = _per_row(generator, n, "reverie.inverse.solve", allow_none=False)
    agree((n, tuple(y.shape), args["method"], args["steps"], fingerprint(args["denoiser"])),
          "the problem (n, y's shape, method, steps) or the model's weights")
    rows = shard(n)
    res = None
    if len(rows):
        lo, hi = rows.start, rows.stop
        res = fn(**args, y=y[lo:hi], n=hi - lo, generator=gens[lo:hi], return_info=True)
    samples = gather_rows(None if res is None else res.samples)
    extras = [e for e in _all_gather_object(None if res is None else dict(res.extra))
              if e is not None]
    extra = {k: torch.cat([e[k] for e in extras]) if isinstance(v, Tensor) else v
             for k, v in extras[0].items()}
    parts = [r for r in _all_gather_object(res and dataclasses.replace(
        res, samples=samples[:0], extra={})) if r is not None]
    return dataclasses.replace(parts[0], samples=samples, extra=extra)


# ---------------------------------------------------------------------------------------------
# One particle population over the ranks
# ---------------------------------------------------------------------------------------------


_RECEIVED = [0]  # bytes this process received in population gathers (received_bytes)


def received_bytes() -> int:
    """The bytes this process has received in :class:`Population` gathers so far (for the
    communication measurements of ``reverie bench distributed``)."""
    return _RECEIVED[0]


def _digest(generator: Any) -> Any:
    """A comparable summary of a generator's state (or of a list of them)."""
    if generator is None:
        return None
    gens = [generator] if isinstance(generator, torch.Generator) else list(generator)
    return [hashlib.sha1(g.get_state().numpy().tobytes()).hexdigest()[:16] for g in gens]


def agree_generators(generator: Any, what: str) -> None:
    """Every rank must hold the same generator state(s) (a particle population draws the same
    global random numbers on every rank); a mismatch is a :class:`~reverie.UserError`."""
    agree(_digest(generator), f"{what}'s generator state (pass every rank the same seed)")


class Population:
    """``total`` particles, rows ``0 .. total-1``, in populations of ``block`` consecutive rows
    (default: one population of ``total``). With ``split`` (and a process group of more than
    one rank) every population is split over the ranks: rank ``r`` holds the rows
    ``shard(block, r)`` of each block (:attr:`index`, in increasing order), so ``world`` ranks
    of ``K`` particles run one population of ``world * K``. Without it one process holds every
    row and each method below is the identity or plain indexing.

    The contract that keeps a split run equal to the one-process run with the same total
    population and seed: per-particle *random numbers* are drawn for the whole population on
    every rank and cut with :meth:`local` (each rank's shared generator then stays in the same
    state), per-particle *weights* are gathered with :meth:`gather` before anything that
    mixes particles (normalising, resampling), and resampled particles are fetched with
    :meth:`take`. ``bytes`` counts what this rank received in gathers."""

    def __init__(self, total: int, split: bool = False, block: int | None = None):
        self.total = int(total)
        self.block = self.total if block is None else int(block)
        self.split = bool(split) and is_initialized() and world_size() > 1
        if self.split and self.block < world_size():  # known alike on every rank: no hang
            raise UserError(f"a population of {self.block} particles cannot be split over "
                            f"{world_size()} ranks (each needs one); use at least "
                            f"{world_size()} particles or fewer ranks")
        self.indices = [self._rows(r) for r in range(world_size())] if self.split else []
        self.index = self.indices[rank()] if self.split else torch.arange(self.total)
        self.bytes = 0

    def _rows(self, r: int) -> Tensor:
        """The global rows rank ``r`` holds: its shard of every block."""
        part = shard(self.block, r)
        starts = torch.arange(0, self.total, self.block)
        return (starts[:, None] + torch.arange(part.start, part.stop)).flatten()

    def local(self, x: Tensor) -> Tensor:
        """This rank's rows of a tensor over the whole population (e.g. a noise draw)."""
        return x[self.index.to(x.device)] if self.split else x

    def gather(self, x: Tensor) -> Tensor:
        """The whole population's rows from every rank's rows ``x`` (one padded all-gather)."""
        if not self.split:
            return x
        if len(x) != len(self.index):
            raise ValueError(f"expected this rank's {len(self.index)} particles, got {len(x)}")
        width = max(len(i) for i in self.indices)
        buf = torch.zeros((width, *x.shape[1:]), dtype=x.dtype, device=_comm_device())
        buf[: len(x)] = x.detach()
        bufs = [torch.empty_like(buf) for _ in self.indices]
        torch.distributed.all_gather(bufs, buf)
        received = buf.element_size() * buf.numel() * (len(bufs) - 1)
        self.bytes += received
        _RECEIVED[0] += received
        out = torch.empty((self.total, *x.shape[1:]), dtype=x.dtype, device=buf.device)
        for b, rows in zip(bufs, self.indices):
            out[rows.to(buf.device)] = b[: len(rows)]
        return out.to(x.device)

    def take(self, index: Tensor, *xs: Tensor) -> tuple[Tensor, ...]:
        """Resampling: for each rank-local ``x``, this rank's rows of ``x_global[index]``
        (``index``: the ancestors of the whole population, the same on every rank). One
        process: ``x[index]``. The same tensor passed twice is exchanged once."""
        if not self.split:
            return tuple(x[index] for x in xs)
        mine = index[self.index.to(index.device)]
        done: dict[int, Tensor] = {}
        for x in xs:
            if id(x) not in done:
                done[id(x)] = self.gather(x)[mine.to(x.device)]
        return tuple(done[id(x)] for x in xs)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (a decision every rank must take alike)."""
        if not self.split:
            return bool(flag)
        t = torch.tensor([float(flag)], device=_comm_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)
