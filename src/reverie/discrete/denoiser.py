"""Token denoisers: every masked-diffusion network becomes one interface (DESIGN.md, idea 2).

A token denoiser maps ``(x_t: LongTensor[B, L], t: Tensor[B])`` to the log-probabilities
``log p(x0^i = v | x_t)`` as ``[B, L, V]`` float32. :class:`TokenDenoiser` wraps any callable
``fn(x, t) -> logits`` and applies the SUBS parameterisation of MDLM (Sahoo et al. 2024,
``_subs_parameterization``) in the adapter, so samplers never see a network's quirks:

* *zero masking probability*: the mask token is never predicted (its logit is ``-inf``);
* *carry-over unmasking*: a position that is already clean predicts itself with probability 1.

:class:`TokenClassifierFreeGuidance` is a denoiser -> denoiser combinator (LLaDA, Nie et al.
2025; LLaDA ``generate.py``: the unconditional branch sees the prompt replaced by masks).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from reverie._checks import integer
from reverie.discrete.process import DiscreteProcess, MaskedProcess

__all__ = ["TokenDenoiserBase", "TokenDenoiser", "TokenClassifierFreeGuidance", "subs"]


def _time(t: float | Tensor, x: Tensor) -> Tensor:
    t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
    if t.ndim == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape [{x.shape[0]}], got {tuple(t.shape)}")
    return t.float()


def subs(logits: Tensor, x: Tensor, mask_id: int | None) -> Tensor:
    """MDLM's SUBS parameterisation on raw ``logits`` ``[B, L, V]`` at input ``x``: log-softmax
    with the mask logit at ``-inf`` and clean positions carried over. With ``mask_id=None``
    (uniform-noise models) this is a plain log-softmax."""
    logits = logits.float()
    v = logits.shape[-1]
    if mask_id is None:
        return torch.log_softmax(logits, dim=-1)
    if mask_id < v:
        logits = logits.clone()
        logits[..., mask_id] = -torch.inf
    logp = torch.log_softmax(logits, dim=-1)
    clean = x != mask_id
    if bool(clean.any()):
        carry = torch.full_like(logp, -torch.inf)
        carry.scatter_(-1, x.clamp(0, v - 1).unsqueeze(-1), 0.0)
        logp = torch.where(clean.unsqueeze(-1), carry, logp)
    return logp


class TokenDenoiserBase(ABC):
    """The interface token samplers use.

    Attributes: ``mask_id`` (``None`` for uniform-noise models; ``vocab_size`` itself when the
    mask is an extra input id without a logit, as in MD4), ``vocab_size`` (number of logits),
    ``process`` (the discrete process the model was trained for), ``time_conditioned`` (whether
    the output depends on ``t``; when it does not, samplers skip the network for rows whose input
    did not change -- MDLM's cache) and optionally ``tokenizer`` with ``encode``/``decode``.

    ``takes_padding``: whether ``__call__`` also accepts ``attention_mask`` (bool ``[B, L]``,
    True = a real token) for left-padded rows of a ragged batch, giving each row the output it
    gives alone; :func:`~reverie.discrete.generate` calls other models on each row's unpadded
    part instead.
    """

    mask_id: int | None
    vocab_size: int
    process: DiscreteProcess
    time_conditioned: bool = True
    tokenizer: Any = None
    takes_padding: bool = False

    @abstractmethod
    def __call__(self, x: Tensor, t: float | Tensor) -> Tensor:
        """``log p(x0 | x_t = x)``: ``[B, L, vocab_size]`` float32 log-probabilities."""

    # ---- text ------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (needs a tokenizer)."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; pass the prompt as token ids")
        ids = self.tokenizer.encode(text)
        return list(ids)

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        """Text of one row of token ids (needs a tokenizer)."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer to decode with")
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(list(ids))


class TokenDenoiser(TokenDenoiserBase):
    """Wrap ``fn(x: LongTensor[B, L], t: Tensor[B]) -> logits[B, L, V]`` (or an object with
    ``.logits``, as transformers returns) as a token denoiser with the SUBS rules applied.

    ``mask_id``: the mask token's id (``None`` only for uniform-noise models). ``vocab_size``:
    the number of logits ``V`` the model returns; a model returning another size is an error.
    ``t`` reaches ``fn`` as float32 ``[B]`` in ``[0, 1]`` (1 = all masked). Pass
    ``time_conditioned=False`` for models that ignore ``t`` (MDLM without time conditioning,
    LLaDA, Dream): samplers then reuse the last output for rows whose input did not change.
    ``padding=True``: ``fn`` also takes ``attention_mask=`` (bool ``[B, L]``, True = a real
    token; passed only for padded batches), see :attr:`TokenDenoiserBase.takes_padding`.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        mask_id: int | None,
        vocab_size: int,
        process: DiscreteProcess | None = None,
        time_conditioned: bool = True,
        tokenizer: Any = None,
        padding: bool = False,
    ):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        integer("vocab_size", vocab_size, 2)
        if mask_id is not None and (
            isinstance(mask_id, bool)
            or not isinstance(mask_id, int)
            or not 0 <= mask_id <= vocab_size
        ):
            raise ValueError(
                f"mask_id must be an integer in [0, vocab_size={vocab_size}] (or None for "
                f"uniform-noise models), got {mask_id!r}"
            )
        process = MaskedProcess() if process is None else process
        if not isinstance(process, DiscreteProcess):
            raise TypeError(f"process must be a DiscreteProcess, got {type(process).__name__}")
        if process.kind == "masked" and mask_id is None:
            raise ValueError(
                "a masked-diffusion model needs a mask token: pass mask_id= (the id of the mask "
                "token, e.g. tokenizer.mask_token_id)"
            )
        self.fn = fn
        self.mask_id = mask_id
        self.vocab_size = vocab_size
        self.process = process
        self.time_conditioned = bool(time_conditioned)
        self.tokenizer = tokenizer
        self.takes_padding = bool(padding)

    def logits(
        self, x: Tensor, t: float | Tensor, attention_mask: Tensor | None = None
    ) -> Tensor:
        """The raw network logits ``[B, L, V]`` (validated), before SUBS."""
        if not isinstance(x, Tensor) or x.dtype != torch.long or x.ndim != 2:
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"x must be a LongTensor [batch, length], got {got}")
        if attention_mask is None:
            out = self.fn(x, _time(t, x))
        elif not self.takes_padding:
            raise TypeError("this denoiser takes no attention_mask (build it with padding=True)")
        else:
            out = self.fn(x, _time(t, x), attention_mask=attention_mask)
        if not isinstance(out, Tensor) and hasattr(out, "logits"):
            out = out.logits
        if not isinstance(out, Tensor) or out.ndim != 3 or out.shape[:2] != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"the model must return logits of shape [{x.shape[0]}, {x.shape[1]}, "
                f"{self.vocab_size}], got {got}"
            )
        if out.shape[-1] != self.vocab_size:
            raise ValueError(
                f"the model returned logits over {out.shape[-1]} tokens, but the denoiser was "
                f"built with vocab_size={self.vocab_size}"
            )
        if bool(torch.isnan(out).any()) or bool((out == torch.inf).any()):
            raise FloatingPointError("the model returned NaN or +inf logits")
        return out

    def __call__(
        self, x: Tensor, t: float | Tensor, attention_mask: Tensor | None = None
    ) -> Tensor:
        return subs(self.logits(x, t, attention_mask), x, self.mask_id)

    def __repr__(self) -> str:
        return (
            f"TokenDenoiser(mask_id={self.mask_id}, vocab_size={self.vocab_size}, "
            f"process={self.process!r})"
        )


class TokenClassifierFreeGuidance(TokenDenoiserBase):
    """Classifier-free guidance for masked diffusion LMs (LLaDA, Nie et al. 2025, ``cfg_scale``):

        log p_guided ∝ log p(. | x) + (scale - 1) (log p(. | x) - log p(. | x_uncond)),

    where ``x_uncond`` is ``x`` with the first ``prompt_length`` positions replaced by the mask.
    ``scale = 1`` is the conditional model, ``scale = 0`` the unconditional one; LLaDA's
    ``cfg_scale = w`` is ``scale = 1 + w``. Both branches run in one batched call.
    """

    def __init__(self, denoiser: TokenDenoiserBase, scale: float, prompt_length: int):
        if not isinstance(denoiser, TokenDenoiserBase):
            raise TypeError(f"denoiser must be a token denoiser, got {type(denoiser).__name__}")
        if denoiser.mask_id is None:
            raise ValueError("classifier-free guidance masks the prompt: the model needs a mask_id")
        if not isinstance(prompt_length, int) or prompt_length < 0:
            raise ValueError(f"prompt_length must be a non-negative integer, got {prompt_length!r}")
        self.denoiser = denoiser
        self.scale = float(scale)
        self.prompt_length = prompt_length
        self.mask_id = denoiser.mask_id
        self.vocab_size = denoiser.vocab_size
        self.process = denoiser.process
        self.time_conditioned = denoiser.time_conditioned
        self.tokenizer = denoiser.tokenizer

    def __call__(self, x: Tensor, t: float | Tensor) -> Tensor:
        if self.scale == 1.0 or self.prompt_length == 0:
            return self.denoiser(x, t)
        t = _time(t, x)
        xu = x.clone()
        xu[:, : self.prompt_length] = self.mask_id
        lc, lu = self.denoiser(torch.cat([x, xu]), torch.cat([t, t])).chunk(2)
        both = torch.isfinite(lc) & torch.isfinite(lu)
        mixed = torch.where(both, lu + self.scale * (lc - lu), lc)
        return torch.log_softmax(mixed, dim=-1)

    def __repr__(self) -> str:
        return f"TokenClassifierFreeGuidance(scale={self.scale}, {self.denoiser!r})"
