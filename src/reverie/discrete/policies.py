"""The time and block policies a token sampler carries (:class:`~reverie.discrete.TokenSampler`
``clock`` and ``blocks``), used by :func:`reverie.discrete.generate`.

A **clock** gives the times at which the model is evaluated and to which a step moves:
``clock(process, rows, masked_in_block, draw, new_block) -> (t, s)`` per row (float64 ``[n]``;
``s = 0`` on a block's last step). ``rows`` is the loop's per-row bookkeeping (``lo``, ``hi``,
``step``, ``steps``, ``time``), ``draw(*shape)`` fresh uniforms ``[n, L, *shape]``.

A **block policy** says where each row's current block lies (semi-autoregressive decoding):
:class:`FixedBlocks` tiles the canvas with ``block_length``; :class:`AdaptiveBlocks` (AdaBlock)
ends each block at a confident delimiter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["CLOCKS", "BLOCKS", "grid_clock", "first_hitting_clock", "grid_times",
           "BlockPolicy", "FixedBlocks", "AdaptiveBlocks"]

Clock = Callable[..., tuple[Tensor, Tensor]]


def grid_times(rows: Any) -> tuple[Tensor, Tensor]:
    """``t = 1 - j / steps`` and ``s = 1 - (j + 1) / steps`` at step ``j`` of each row's block."""
    steps = rows.steps.clamp_min(1).double()
    t = 1.0 - rows.step.double() / steps
    s = (1.0 - (rows.step.double() + 1.0) / steps).clamp_min(0.0)
    return t, s


def grid_clock(process, rows, masked_in_block: Tensor, draw, new_block: Tensor):
    """A fixed grid within each block (:func:`grid_times`)."""
    return grid_times(rows)


def first_hitting_clock(process, rows, masked_in_block: Tensor, draw, new_block: Tensor):
    """First-hitting times (Zheng et al. 2024; BD3-LM ``first_hitting``): with ``k`` masked tokens
    at time ``t``, the next one is unmasked when ``1 - alpha`` falls to
    ``(1 - alpha(t)) u^(1/k)``, ``u ~ U(0, 1)``. Returns that time and ``s`` (0 on the last)."""
    u = draw(1)[:, 0, 0]
    k = masked_in_block.sum(-1).clamp_min(1).double()
    t_now = torch.where(new_block, torch.ones_like(rows.time), rows.time)
    one_minus = (1.0 - process.alpha(t_now)) * u.clamp_min(1e-300) ** (1.0 / k)
    tau = process.schedule.t_from_alpha(1.0 - one_minus).clamp(0.0, 1.0)
    rows.time = tau
    return tau, torch.where(k <= 1, torch.zeros_like(tau), tau)


class BlockPolicy:
    """Where blocks lie. :meth:`defaults` fills model-given options, :meth:`tile` gives the
    block length used to tile the canvas, :meth:`n_blocks` the blocks the step count is shared
    between, :meth:`start` places the new blocks of rows that finished theirs, and :meth:`plan`
    may move them once the model's prediction is known (returns whether it did)."""

    name = ""

    def defaults(self, opts: dict[str, Any], model: Any) -> None:
        pass

    def tile(self, block_length: int | None, length: int) -> tuple[int | None, int]:
        """``(block_length, tile length)``."""
        return block_length, length if block_length is None else block_length

    def n_blocks(self, gen_blocks: list[int]) -> int:
        return len(gen_blocks)

    def start(self, rows, new_block: Tensor, first: Tensor, tile: int,
              per_block: dict[int, int], length: int) -> None:
        """Rows in ``new_block`` move to the tile holding their first masked position, with the
        steps ``per_block`` gives that tile (one dict, or one per row). Tiles start at each
        row's ``rows.origin`` (0 unless rows of a ragged batch are padded)."""
        origin = getattr(rows, "origin", 0)
        lo = origin + torch.div(first - origin, tile, rounding_mode="floor") * tile
        rows.lo = torch.where(new_block, lo, rows.lo)
        rows.hi = torch.where(new_block, (lo + tile).clamp_max(length), rows.hi)
        plans = per_block if isinstance(per_block, list) else [per_block] * len(lo)
        k = torch.tensor([p.get(int(b), 1) for p, b in zip(plans, lo.tolist())],
                         device=first.device)
        rows.steps = torch.where(new_block, k, rows.steps)

    def plan(self, rows, new_block: Tensor, logp: Tensor, x: Tensor, mask_id: int,
             opts: dict[str, Any], block_length: int | None, n_gen: int, steps: int,
             length: int) -> bool:
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FixedBlocks(BlockPolicy):
    """Tiles of ``block_length`` (one block over the canvas without it)."""

    name = "fixed"


class AdaptiveBlocks(BlockPolicy):
    """AdaBlock (Lu et al. 2025): a block starts at the first masked position and ends at a
    confident delimiter (at most ``block_length``, default ``min(32, length)``, positions)."""

    name = "adaptive"

    def defaults(self, opts: dict[str, Any], model: Any) -> None:
        if opts.get("delimiters") is None:
            opts["delimiters"] = getattr(model, "delimiter_ids", None)

    def tile(self, block_length: int | None, length: int) -> tuple[int | None, int]:
        return (min(32, length) if block_length is None else block_length), length

    def n_blocks(self, gen_blocks: list[int]) -> int:
        return 1

    def start(self, rows, new_block, first, tile, per_block, length) -> None:
        rows.lo = torch.where(new_block, first, rows.lo)
        rows.hi = torch.where(new_block, torch.full_like(first, length), rows.hi)

    def plan(self, rows, new_block, logp, x, mask_id, opts, block_length, n_gen, steps,
             length) -> bool:
        """AdaBlock's ``compute_block_length``: in a window of ``window * generated length``
        positions after the block start, find the positions whose argmax prediction is a
        delimiter; if the most confident of them has confidence at least
        ``delimiter_threshold``, the block ends there (inclusive), else it is ``block_length``
        long."""
        if not bool(new_block.any()):
            return False
        delims = opts.get("delimiters")
        if not delims:
            raise ValueError(
                "adablock needs the delimiter token ids: pass delimiters=[...] (e.g. the ids of "
                "'\\n' or ','); models loaded with reverie.discrete.load_model supply their own"
            )
        delim = torch.as_tensor(list(delims), dtype=torch.long, device=x.device)
        conf, pred = logp.exp().max(-1)
        positions = torch.arange(length, device=x.device)
        window = max(1, int(math.ceil(float(opts["window"]) * n_gen)))
        for r in new_block.nonzero().squeeze(-1).tolist():
            lo = int(rows.lo[r])
            hi_w = min(length, lo + window)
            sel = ((positions >= lo) & (positions < hi_w) & (x[r] == mask_id)
                   & torch.isin(pred[r], delim))
            end = min(length, lo + block_length)
            if bool(sel.any()):
                c = torch.where(sel, conf[r], torch.full_like(conf[r], -1.0))
                best = int(c.argmax())
                if float(c[best]) >= float(opts["delimiter_threshold"]):
                    end = best + 1
            rows.hi[r] = end
            size = int(((x[r] == mask_id) & (positions >= lo) & (positions < end)).sum())
            rows.steps[r] = max(1, min(size, round(size * steps / max(n_gen, 1))))
        return True


#: Clocks and block policies by the names a :class:`TokenSampler` may also give.
CLOCKS: dict[str, Clock] = {"grid": grid_clock, "first_hitting": first_hitting_clock}
BLOCKS: dict[str, BlockPolicy] = {"fixed": FixedBlocks(), "adaptive": AdaptiveBlocks()}
