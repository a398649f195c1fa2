"""Attention-perturbation guidance: the "perturbed" family.

A method of this family guides away from a *perturbed* prediction ``D_p(x)`` of the same
network, with chosen self-attention layers degraded: ``D = D_cfg(w) + s (D_c - D_p)``, with
``D_cfg(w) = D_u + w (D_c - D_u)`` classifier-free guidance at the method's scale ``w``
(``w = 1``: the conditional model, no unconditional branch needed) and ``s`` the option
``pag_scale``. The perturbation is an option ``perturb``: a callable returning a context
manager inside which the denoiser computes ``D_p`` (the network's attention processors
swapped); :func:`perturbation` builds one for any diffusers UNet / transformer, and the latent
pipelines build it themselves for ``guidance="pag"`` (``guidance_options={"layers": [...]}``).

* ``pag`` (Ahn et al. 2024, perturbed-attention guidance): the self-attention map of the chosen
  layers is replaced by the identity (each token attends to itself only: the output is the
  value projection), as diffusers' ``StableDiffusionPAGPipeline``.

Layers are selected as diffusers does: a layer id (``"mid"``, ``"down_blocks.1"``,
``"up_blocks.0.attentions.1"``, ...) is a regular expression searched in the names of the
network's self-attention modules (``attn1``), with diffusers' exclusion of a name and an id
that both end in the same number.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from reverie.guidance import Call, register

__all__ = ["KINDS", "perturbation", "self_attention_layers", "pag", "pipeline_options"]

#: the perturbation each method of the family applies.
KINDS = ("pag",)


def self_attention_layers(network: nn.Module, layers: str | Sequence[str]) -> list[str]:
    """Names of ``network``'s self-attention modules selected by ``layers`` (module
    docstring); a layer id that selects nothing is an error."""
    from diffusers.models.attention_processor import Attention

    ids = [layers] if isinstance(layers, str) else list(layers)
    if not ids or not all(isinstance(i, str) for i in ids):
        raise TypeError(f"layers must be a layer id or a non-empty list of them, got {layers!r}")
    selfs = [n for n, m in network.named_modules()
             if isinstance(m, Attention) and not m.is_cross_attention]
    chosen: list[str] = []
    for lid in ids:
        last = lid.split(".")[-1]
        found = [n for n in selfs if re.search(lid, n) and not (  # diffusers' fake-integral rule
            last.isnumeric() and n.split(".")[-1].isnumeric() and last == n.split(".")[-1])]
        if not found:
            raise ValueError(f"layer id {lid!r} selects no self-attention layer of "
                             f"{type(network).__name__}; its self-attention layers: {selfs}")
        chosen += [n for n in found if n not in chosen]
    return chosen


class IdentityAttention:
    """A diffusers attention processor whose attention map is the identity: each token keeps
    its own value (PAG's perturbation), through the module's norms and output projection."""

    def __call__(self, attn: Any, hidden_states: Tensor, encoder_hidden_states: Tensor | None
                 = None, attention_mask: Tensor | None = None, temb: Tensor | None = None,
                 *args: Any, **kwargs: Any) -> Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        shape = hidden_states.shape
        if hidden_states.ndim == 4:  # [B, C, H, W] -> [B, HW, C]
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        out = attn.to_out[1](attn.to_out[0](attn.to_v(hidden_states)))  # softmax(QK^T) = I
        if len(shape) == 4:
            out = out.transpose(1, 2).reshape(shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def perturbation(network: nn.Module, kind: str = "pag",
                 layers: str | Sequence[str] = "mid") -> Callable[[], Any]:
    """``perturb`` for the perturbed family: a callable whose context swaps the attention
    processors of ``network``'s self-attention ``layers`` for the ``kind`` perturbation and
    restores them on exit."""
    if kind not in KINDS:
        raise ValueError(f"unknown perturbation kind {kind!r}; expected one of {KINDS}")
    names = self_attention_layers(network, layers)
    modules = dict(network.named_modules())

    @contextmanager
    def perturb() -> Iterator[None]:
        saved = {n: modules[n].processor for n in names}
        try:
            for n in names:
                modules[n].processor = IdentityAttention()
            yield
        finally:
            for n, proc in saved.items():
                modules[n].processor = proc

    return perturb


def pipeline_options(network: nn.Module, method: str, options: dict[str, Any]) -> dict[str, Any]:
    """A pipeline's guidance options for ``method``: for the perturbed family, ``layers``
    (default ``"mid"``) becomes ``perturb`` on ``network``; other methods' are unchanged."""
    from reverie.guidance import METHODS

    info = METHODS[method]
    if info.family != "perturbed" or "perturb" in options:
        return options
    options = dict(options)
    options["perturb"] = perturbation(network, info.name, options.pop("layers", "mid"))
    return options


def _perturbed_guidance(call: Call, w: float, s: float, perturb: Callable[[], Any]) -> Tensor:
    """``D_cfg(w) + s (D_c - D_p)``."""
    if perturb is None or not callable(perturb):
        raise ValueError(f"{call.guided.method.name} needs perturb= a callable returning a "
                         "context manager (reverie.guidance.attention.perturbation), got "
                         f"{perturb!r}")
    if w == 1.0:
        d_c = guided = call.conditional()
    elif call.guided.uncond is None:
        raise ValueError(f"{call.guided.method.name} at scale {w:g} != 1 needs uncond= (the "
                         "classifier-free branch)")
    else:
        d_c, d_u = call.pair()
        guided = d_u + w * (d_c - d_u)
    with perturb():
        d_p = call.guided.denoiser(call.x, call.t, **call.cond)
    return guided + s * (d_c - d_p)


@register("pag", family="perturbed", needs=(), schedulable=False,
          options={"pag_scale": 3.0, "perturb": None},
          paper="Ahn et al. 2024 (Self-rectifying diffusion sampling with perturbed-attention "
          "guidance)",
          description="perturbed-attention guidance: D_cfg(w) + pag_scale (D_c - D_p), D_p "
          "with the self-attention maps of the chosen layers replaced by the identity "
          "(perturb=, see reverie.guidance.attention.perturbation); w = 1: no CFG")
def pag(call: Call, w: float, pag_scale: float, perturb: Callable[[], Any]) -> Tensor:
    return _perturbed_guidance(call, w, float(pag_scale), perturb)
