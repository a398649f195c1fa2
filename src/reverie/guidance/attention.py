"""Attention-perturbation guidance: the "perturbed" family.

A method of this family guides away from a *perturbed* prediction ``D_p(x)`` of the same
network, with chosen layers degraded: ``D = D_cfg(w) + s (D_c - D_p)``, with
``D_cfg(w) = D_u + w (D_c - D_u)`` classifier-free guidance at the method's scale ``w``
(``w = 1``: the conditional model, no unconditional branch needed) and ``s`` the option
``pag_scale`` / ``slg_scale`` / ``seg_scale``. The perturbation is the option ``perturb``: a
callable returning a context manager inside which the denoiser computes ``D_p``;
:func:`perturbation` builds one for a diffusers UNet / transformer, and the latent pipelines
build it themselves for ``guidance="pag"`` / ``"slg"`` / ``"seg"`` (``guidance_options=
{"layers": [...]}``). ``perturb_interval=(t_lo, t_hi)`` keeps the perturbed term to those times.

* ``pag`` (Ahn et al. 2024, perturbed-attention guidance): the self-attention map of the chosen
  layers is replaced by the identity (each token attends to itself only: the output is the
  value projection), as diffusers' ``StableDiffusionPAGPipeline``.
* ``slg`` (skip-layer guidance, SD3.5): the chosen transformer blocks are skipped (return their
  inputs), as ``skip_guidance_layers`` of diffusers' ``StableDiffusion3Pipeline``.
* ``seg`` (Hong 2024, smoothed-energy guidance): the queries of the chosen self-attention
  layers are Gaussian-blurred over the token grid (``blur_sigma``; ``inf``: their mean).

PAG's and SEG's layers are selected as diffusers' PAG does: a layer id (``"mid"``,
``"down_blocks.1"``, ``"up_blocks.0.attentions.1"``, ...) is a regular expression searched in
the names of the network's self-attention modules (``attn1``), with diffusers' exclusion of a
name and an id that both end in the same number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reverie.guidance import Call, register

__all__ = ["KINDS", "DEFAULT_LAYERS", "perturbation", "self_attention_layers", "pipeline_options",
           "blur_queries", "pag", "slg", "seg"]

#: the perturbation each method of the family applies.
KINDS = ("pag", "slg", "seg")


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
                 layers: str | Sequence[str] | Sequence[int] = "mid",
                 fqn: str = "transformer_blocks", blur_sigma: float = math.inf
                 ) -> Callable[[], Any]:
    """``perturb`` for the perturbed family: a callable whose context perturbs ``network`` and
    restores it on exit. ``pag``: the self-attention ``layers`` (ids, module docstring) get the
    identity attention map; ``slg``: the transformer blocks numbered ``layers`` in the block
    list ``fqn`` are skipped (each returns its inputs, as ``skip_layers`` in diffusers' SD3);
    ``seg``: the queries of the self-attention ``layers`` are blurred by :func:`blur_queries`
    with ``blur_sigma``."""
    if kind == "slg":
        return _skip_layers(network, layers, fqn)
    if kind not in KINDS:
        raise ValueError(f"unknown perturbation kind {kind!r}; expected one of {KINDS}")
    names = self_attention_layers(network, layers)
    modules = dict(network.named_modules())
    if kind == "seg":
        return _blurred_queries([modules[n] for n in names], float(blur_sigma))
    joint = [n for n in names if getattr(modules[n], "add_q_proj", None) is not None]
    if joint:  # SD3 / Flux attend over image and text tokens together: another processor
        raise ValueError(f"pag on joint (image + text) attention is not implemented; "
                         f"{joint[0]} is one")

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


def blur_queries(q: Tensor, sigma: float) -> Tensor:
    """SEG's smoothing (Hong 2024, as the released SEG-SDXL code): the first ``side^2`` tokens
    of queries ``[B, N, C]`` seen as a ``side x side`` image are blurred by a Gaussian of
    standard deviation ``sigma`` tokens (kernel ``ceil(6 sigma) + 1`` rounded to odd, at most
    ``side`` (odd: ``side + 1``), reflect padding); ``sigma = inf`` replaces them by their
    mean (the limit). diffusers 0.42's copy swaps the two branches (its finite sigmas take the
    mean)."""
    b, n, c = q.shape
    side = math.isqrt(n)
    img = q[:, : side * side].transpose(1, 2).reshape(b, c, side, side)
    if math.isinf(sigma):
        img = img.mean(dim=(-2, -1), keepdim=True).expand_as(img)
    else:
        k = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
        k = min(k, side - (side % 2 - 1))  # diffusers' / SEG-SDXL's cap
        x = torch.linspace(-(k - 1) / 2, (k - 1) / 2, k)
        g = torch.exp(-0.5 * (x / sigma) ** 2)
        g = (g / g.sum()).to(q)
        kernel = (g[:, None] * g[None, :]).expand(c, 1, k, k)
        img = F.conv2d(F.pad(img, [k // 2] * 4, mode="reflect"), kernel, groups=c)
    blurred = img.reshape(b, c, side * side).transpose(1, 2)
    return torch.cat([blurred, q[:, side * side:]], dim=1)


def _blurred_queries(modules: list[nn.Module], sigma: float) -> Callable[[], Any]:
    if not sigma > 0:
        raise ValueError(f"blur_sigma must be > 0 (math.inf: the mean), got {sigma!r}")

    def hook(module: nn.Module, args: Any, out: Tensor) -> Tensor:
        return blur_queries(out, sigma)

    @contextmanager
    def perturb() -> Iterator[None]:
        handles = [m.to_q.register_forward_hook(hook) for m in modules]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    return perturb


def _skip_layers(network: nn.Module, layers: Any, fqn: str) -> Callable[[], Any]:
    # which argument is hidden_states / encoder_hidden_states and where each block returns them
    # (diffusers' registry; its own layer-skip hook returns the pair in the wrong order for
    # SD3's JointTransformerBlock in diffusers 0.42, so it is not used)
    from diffusers.hooks._helpers import TransformerBlockRegistry

    indices = [layers] if isinstance(layers, int) else layers
    if (isinstance(indices, str) or not indices
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices)):
        raise TypeError(f"slg takes layers= block indices (ints), got {layers!r}")
    blocks = network.get_submodule(fqn) if fqn else None
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"fqn {fqn!r} names no block list of {type(network).__name__} (e.g. "
                         "'transformer_blocks')")
    bad = [i for i in indices if not -len(blocks) <= i < len(blocks)]
    if bad:
        raise ValueError(f"slg layers {bad} out of range: {fqn} has {len(blocks)} blocks")
    chosen = [blocks[i] for i in indices]
    metas = [TransformerBlockRegistry.get(type(b)) for b in chosen]  # unknown class: an error

    def skipped(meta: Any) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:  # the block returns its inputs
            h = meta._get_parameter_from_args_kwargs(meta.hidden_states_argument_name, args,
                                                     kwargs)
            if meta.return_encoder_hidden_states_index is None:
                return h
            out: list[Any] = [None, None]
            out[meta.return_hidden_states_index] = h
            out[meta.return_encoder_hidden_states_index] = meta._get_parameter_from_args_kwargs(
                meta.encoder_hidden_states_argument_name, args, kwargs)
            return tuple(out)

        return forward

    @contextmanager
    def perturb() -> Iterator[None]:
        try:
            for block, meta in zip(chosen, metas):
                block.forward = skipped(meta)  # an instance attribute shadows the method
            yield
        finally:
            for block in chosen:
                block.__dict__.pop("forward", None)

    return perturb


def pipeline_options(network: nn.Module, method: str, options: dict[str, Any]) -> dict[str, Any]:
    """A pipeline's guidance options for ``method``: for the perturbed family, ``layers``
    (default: :data:`DEFAULT_LAYERS`), ``fqn`` (slg) and ``blur_sigma`` (seg) become
    ``perturb`` on ``network``; other methods' are unchanged."""
    from reverie.guidance import METHODS

    info = METHODS[method]
    if info.family != "perturbed" or "perturb" in options:
        return options
    options = dict(options)
    layers = options.pop("layers", DEFAULT_LAYERS[info.name])
    # each kind's own settings; another kind's stay in options and are refused by guide
    extra = ({"blur_sigma": options.pop("blur_sigma", math.inf)} if info.name == "seg" else
             {"fqn": options.pop("fqn", "transformer_blocks")} if info.name == "slg" else {})
    options["perturb"] = perturbation(network, info.name, layers, **extra)
    return options


#: the layers a pipeline perturbs when ``guidance_options`` name none (diffusers' defaults:
#: PAG on the mid block; SLG on SD3.5-medium's blocks 7, 8, 9; SEG as PAG).
DEFAULT_LAYERS: dict[str, Any] = {"pag": "mid", "slg": [7, 8, 9], "seg": "mid"}


def _perturbed_guidance(call: Call, w: float, s: float, perturb: Callable[[], Any],
                        interval: tuple[float, float] | None) -> Tensor:
    """``D_cfg(w) + s (D_c - D_p)``; the second term only for ``t`` in ``interval``."""
    name = call.guided.method.name
    if perturb is None or not callable(perturb):
        raise ValueError(f"{name} needs perturb= a callable returning a context manager "
                         f"(reverie.guidance.attention.perturbation), got {perturb!r}")
    if w == 1.0:
        d_c = guided = call.conditional()
    elif call.guided.uncond is None:
        raise ValueError(f"{name} at scale {w:g} != 1 needs uncond= (the classifier-free "
                         "branch)")
    else:
        d_c, d_u = call.pair()
        guided = d_u + w * (d_c - d_u)
    tf = float(call.t.reshape(-1)[0])
    if s == 0.0 or interval is not None and not interval[0] <= tf <= interval[1]:
        return guided
    with perturb():
        d_p = call.guided.denoiser(call.x, call.t, **call.cond)
    return guided + s * (d_c - d_p)


_INTERVAL_DOC = ("; perturb_interval=(t_lo, t_hi): the perturbed term only there (process "
                 "time)")


@register("pag", family="perturbed", needs=("perturb",), schedulable=False,
          options={"pag_scale": 3.0, "perturb": None, "perturb_interval": None},
          paper="Ahn et al. 2024 (Self-rectifying diffusion sampling with perturbed-attention "
          "guidance)",
          description="perturbed-attention guidance: D_cfg(w) + pag_scale (D_c - D_p), D_p "
          "with the self-attention maps of the chosen layers replaced by the identity "
          "(perturb=, see reverie.guidance.attention.perturbation); w = 1: no CFG"
          + _INTERVAL_DOC)
def pag(call: Call, w: float, pag_scale: float, perturb: Callable[[], Any],
        perturb_interval: tuple[float, float] | None) -> Tensor:
    return _perturbed_guidance(call, w, float(pag_scale), perturb, perturb_interval)


@register("slg", family="perturbed", needs=("perturb",), schedulable=False,
          options={"slg_scale": 2.8, "perturb": None, "perturb_interval": None},
          paper="Stability AI 2024 (skip-layer guidance, SD3.5); diffusers' "
          "StableDiffusion3Pipeline skip_guidance_layers",
          description="skip-layer guidance: D_cfg(w) + slg_scale (D_c - D_p), D_p with the "
          "chosen transformer blocks skipped (perturb=, see "
          "reverie.guidance.attention.perturbation(kind='slg')); w = 1: no CFG"
          + _INTERVAL_DOC)
def slg(call: Call, w: float, slg_scale: float, perturb: Callable[[], Any],
        perturb_interval: tuple[float, float] | None) -> Tensor:
    return _perturbed_guidance(call, w, float(slg_scale), perturb, perturb_interval)


@register("seg", family="perturbed", needs=("perturb",), schedulable=False,
          options={"seg_scale": 3.0, "perturb": None, "perturb_interval": None},
          paper="Hong 2024 (Smoothed energy guidance)",
          description="smoothed-energy guidance: D_cfg(w) + seg_scale (D_c - D_p), D_p with "
          "the queries of the chosen self-attention layers Gaussian-blurred (blur_sigma; inf: "
          "their mean) (perturb=, see reverie.guidance.attention.perturbation(kind='seg')); "
          "w = 1: no CFG" + _INTERVAL_DOC)
def seg(call: Call, w: float, seg_scale: float, perturb: Callable[[], Any],
        perturb_interval: tuple[float, float] | None) -> Tensor:
    return _perturbed_guidance(call, w, float(seg_scale), perturb, perturb_interval)
