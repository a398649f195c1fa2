"""Training-free step reuse inside the network: block / feature caching across calls.

:class:`BlockCache` wraps named blocks of any ``nn.Module`` (a diffusers ``UNet2DModel``,
``UNet2DConditionModel``, a DiT's ``transformer_blocks``, a reverie MLP). A pre-forward hook on
the network counts its calls; on a *full* call every block runs and its output is stored; on a
*partial* call the blocks are not run and return what was stored (``mode="output"``) or their
input plus the stored residual ``output - input`` (``mode="residual"``, for a stack of
transformer blocks, whose outputs are ``x + f(x)``). PyTorch forward hooks can replace an output
but cannot skip the computation, so the blocks' ``forward`` is swapped for the duration of the
cache (``with`` block or :meth:`BlockCache.remove`) and restored afterwards.

The schedule is over network calls: a sampler with one model call per step (DDIM, Euler,
DPM-Solver++(2M), UniPC) refreshes on the listed steps; a two-call sampler (Heun) counts both.

* :func:`deepcache` -- DeepCache (Ma, Fang & Wang 2024, "DeepCache: Accelerating Diffusion
  Models for Free"): in a U-Net, the high-level features of a full step (the input of the
  up block on skip branch ``branch``) are reused for the next steps, where only the shallow
  down blocks ``down_blocks[:branch+1]`` and up blocks ``up_blocks[-branch-1:]`` are run (the
  fresh skip connections carry the new input). Uniform 1:N schedule (refresh every ``interval``
  calls) or the non-uniform one (refreshes denser around a ``center`` step, spaced as a power
  ``power`` of a uniform grid). On a transformer the middle blocks are cached as residuals
  (our adaptation; the paper caches U-Net features).
* :func:`feature_inheritance` -- A-SDM's tuning-free feature inheritance (paper 27, Zhu et al.
  2024): at selected steps chosen blocks (block, layer or unit level: any submodule name)
  inherit their output of the previous step instead of computing it; the step-level modes
  ``all``/``early``/``late`` choose where in the trajectory inheritance happens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

__all__ = [
    "BlockCache",
    "deepcache",
    "deepcache_blocks",
    "feature_inheritance",
    "nonuniform_refresh",
    "uniform_refresh",
]

MODES = ("output", "residual")


def _int_in(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def uniform_refresh(steps: int, interval: int) -> list[bool]:
    """DeepCache's uniform 1:N schedule: a full call every ``interval`` calls, from the first."""
    _int_in("steps", steps, 1, 10**9)
    _int_in("interval", interval, 1, steps)
    return [i % interval == 0 for i in range(steps)]


def nonuniform_refresh(steps: int, interval: int, center: int | None = None,
                       power: float = 1.4) -> list[bool]:
    """DeepCache's non-uniform 1:N schedule: ``ceil(steps / interval)`` full calls placed at
    ``center + sign(u) |u|^power`` for ``u`` uniform between ``-center^(1/power)`` and
    ``(steps - 1 - center)^(1/power)`` -- dense around ``center`` (default ``0.3 steps``, our
    choice), sparse at both ends; the power is lowered by 0.02 until the calls are distinct (it
    reaches the uniform schedule at power 1). The first call is always full."""
    flags = uniform_refresh(steps, interval)  # validates steps and interval
    n_full = sum(flags)
    center = int(0.3 * (steps - 1)) if center is None else _int_in("center", center, 0, steps - 1)
    if not power >= 1:
        raise ValueError(f"power must be >= 1, got {power}")
    p = float(power)
    while True:
        lo, hi = -(center ** (1 / p)), (steps - 1 - center) ** (1 / p)
        u = [lo + (hi - lo) * k / max(n_full - 1, 1) for k in range(n_full)]
        idx = {0} | {min(steps - 1, max(0, round(center + math.copysign(abs(v) ** p, v))))
                     for v in u}
        if len(idx) >= n_full or p <= 1:
            break
        p = max(1.0, p - 0.02)
    return [i in idx for i in range(steps)]


def _resolve(net: nn.Module, name: str) -> nn.Module:
    if not isinstance(name, str):
        raise TypeError(f"block names must be str, got {type(name).__name__}")
    try:
        return net.get_submodule(name)
    except AttributeError:
        top = [n for n, _ in net.named_children()]
        raise ValueError(f"unknown block {name!r} in {type(net).__name__}; its top-level blocks "
                         f"are {', '.join(top) or '(none)'}") from None


def _first_input(args: tuple, kwargs: dict) -> Tensor:
    x = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
    if not isinstance(x, Tensor):
        raise TypeError("mode='residual' needs blocks whose first input is the hidden-state "
                        f"tensor, got {type(x).__name__}")
    return x


class BlockCache:
    """Reuse the outputs of ``blocks`` (submodule names of ``net``) across calls of ``net``.

    ``refresh`` says, per call index, whether the call is full (compute and store) or partial
    (reuse the stored outputs): a list of bools (calls past its end are full) or a function of
    the call index. Counters: ``calls``, ``full_calls``, ``partial_calls``. Use as a context
    manager, or call :meth:`remove` to restore the network.
    """

    def __init__(self, net: nn.Module, blocks: Sequence[str],
                 refresh: Sequence[bool] | Callable[[int], bool], mode: str = "output"):
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if mode not in MODES:
            raise ValueError(f"unknown cache mode {mode!r}; expected one of {', '.join(MODES)}")
        if isinstance(blocks, str) or not blocks:
            raise ValueError("blocks must be a non-empty list of submodule names")
        self.net, self.mode, self.names = net, mode, list(blocks)
        self.modules = [_resolve(net, n) for n in self.names]
        self._refresh = refresh
        self.calls = self.full_calls = self.partial_calls = 0
        self._reuse = False
        self._store: dict[str, Any] = {}
        self._shape: tuple[int, ...] | None = None
        self._handle = net.register_forward_pre_hook(self._on_call, with_kwargs=True)
        for name, mod in zip(self.names, self.modules, strict=True):
            mod.forward = self._wrap(name, mod.forward)  # instance attribute shadows the method

    def is_full(self, call: int) -> bool:
        r = self._refresh
        if callable(r):
            return bool(r(call))
        return call >= len(r) or bool(r[call])

    def _on_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else next(iter(kwargs.values()), None)
        shape = tuple(x.shape) if isinstance(x, Tensor) else None
        full = self.is_full(self.calls) or not self._store
        if not full and shape != self._shape:
            raise ValueError(f"the cache holds features for inputs of shape {self._shape}; call "
                             f"{self.calls} has {shape} (a partial call needs the same batch)")
        self._reuse = not full
        self._shape = shape if full else self._shape
        self.calls += 1
        self.full_calls += full
        self.partial_calls += not full

    def _wrap(self, name: str, forward: Callable) -> Callable:
        def cached_forward(*args: Any, **kwargs: Any) -> Any:
            if self._reuse:  # partial call: the block is not run
                out = self._store[name]
                return _first_input(args, kwargs) + out if self.mode == "residual" else out
            out = forward(*args, **kwargs)
            self._store[name] = (out - _first_input(args, kwargs)) if self.mode == "residual" \
                else out
            return out

        return cached_forward

    def remove(self) -> None:
        """Restore the blocks' own ``forward`` and drop the hook and the stored features."""
        self._handle.remove()
        for mod in self.modules:
            mod.__dict__.pop("forward", None)
        self._store.clear()

    def __enter__(self) -> BlockCache:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        return (f"BlockCache({type(self.net).__name__}, blocks={self.names}, mode={self.mode!r}, "
                f"calls={self.calls}, full={self.full_calls}, partial={self.partial_calls})")


def _unet_depth(net: nn.Module) -> int | None:
    if all(hasattr(net, a) for a in ("down_blocks", "mid_block", "up_blocks")):
        return len(net.down_blocks)
    return None


def deepcache_blocks(net: nn.Module, branch: int = 0) -> tuple[list[str], str]:
    """The blocks DeepCache skips on a partial call and the cache mode, for skip branch
    ``branch``: in a U-Net ``down_blocks[branch+1:]``, ``mid_block`` and
    ``up_blocks[:-branch-1]`` (their outputs are reused); in a transformer with
    ``transformer_blocks`` the blocks ``[branch+1, L-branch-1)`` (their residuals are reused)."""
    n = _unet_depth(net)
    if n is not None:
        _int_in("branch", branch, 0, n - 1)
        return ([f"down_blocks.{i}" for i in range(branch + 1, n)] + ["mid_block"]
                + [f"up_blocks.{i}" for i in range(n - branch - 1)], "output")
    blocks = getattr(net, "transformer_blocks", None)
    if isinstance(blocks, nn.ModuleList):
        depth = len(blocks)
        _int_in("branch", branch, 0, max((depth - 3) // 2, 0))
        return [f"transformer_blocks.{i}" for i in range(branch + 1, depth - branch - 1)], \
            "residual"
    raise TypeError(f"deepcache needs a U-Net (down_blocks, mid_block, up_blocks) or a "
                    f"transformer (transformer_blocks), got {type(net).__name__}")


def deepcache(net: nn.Module, steps: int, interval: int = 3, *, branch: int = 0,
              schedule: str = "uniform", center: int | None = None,
              power: float = 1.4) -> BlockCache:
    """DeepCache (Ma et al. 2024) on ``net`` for a run of ``steps`` network calls: a full call
    every ``interval`` calls (``schedule="uniform"``) or ``ceil(steps/interval)`` full calls
    placed by :func:`nonuniform_refresh` (``"nonuniform"``); the other calls run only the
    shallow blocks of skip branch ``branch`` (:func:`deepcache_blocks`)."""
    if schedule == "uniform":
        flags = uniform_refresh(steps, interval)
    elif schedule == "nonuniform":
        flags = nonuniform_refresh(steps, interval, center, power)
    else:
        raise ValueError(f"unknown schedule {schedule!r}; expected 'uniform' or 'nonuniform'")
    blocks, mode = deepcache_blocks(net, branch)
    return BlockCache(net, blocks, flags, mode)


WHEN = ("all", "early", "late")


def _inherit_default(net: nn.Module) -> tuple[list[str], str]:
    n = _unet_depth(net)
    if n is not None:  # the lowest-resolution part: mid block and the first up block
        return ["mid_block", "up_blocks.0"], "output"
    blocks = getattr(net, "transformer_blocks", None)
    if isinstance(blocks, nn.ModuleList):
        depth = len(blocks)
        return [f"transformer_blocks.{i}" for i in range(depth // 4, depth - depth // 4)], \
            "residual"
    raise TypeError(f"give blocks=[...] for a {type(net).__name__} (no U-Net or transformer "
                    "layout to choose defaults from)")


def feature_inheritance(net: nn.Module, steps: int, blocks: Sequence[str] | None = None, *,
                        interval: int = 2, when: str = "all",
                        mode: str | None = None) -> BlockCache:
    """A-SDM's training-free feature inheritance (Zhu et al. 2024, paper 27): on inheriting
    calls, ``blocks`` return their features of the previous computed call instead of running.

    Within the part of the run chosen by ``when`` (``all``; ``early``: the first half of the
    calls; ``late``: the second half) every ``interval``-th call computes and the others
    inherit; outside it every call computes. Default blocks: the U-Net's ``mid_block`` and
    ``up_blocks.0`` (outputs inherited), or the middle half of a transformer's blocks
    (residuals inherited)."""
    _int_in("steps", steps, 1, 10**9)
    _int_in("interval", interval, 1, steps)
    if when not in WHEN:
        raise ValueError(f"unknown when={when!r}; expected one of {', '.join(WHEN)}")
    if blocks is None:
        blocks, default_mode = _inherit_default(net)
    else:
        default_mode = "output"
    lo, hi = {"all": (0, steps), "early": (0, steps // 2), "late": (steps // 2, steps)}[when]
    flags = [not (lo <= i < hi) or (i - lo) % interval == 0 for i in range(steps)]
    return BlockCache(net, blocks, flags, mode or default_mode)
