"""Prompt-structure guidance for text-to-image UNets: SynGen and Semantic Guidance Tuning.

* :class:`CrossAttentionRecorder`: the per-token cross-attention probabilities of a diffusers
  network's cross-attention layers (``attn2``) during one forward pass, read through diffusers'
  own ``AttnProcessor`` (its ``get_attention_scores``, ``softmax(Q K^T scale)``, is recorded),
  averaged over heads and over the layers at one token-grid resolution: ``[B, res^2, L]``,
  each row summing to 1 over the ``L`` tokens. With gradients, so a loss on the maps can be
  differentiated through the network.
* ``syngen`` (Rassin et al. 2023, "Linguistic Binding in Diffusion Models: Enhancing
  Attribute Correspondence through Attention Map Alignment", NeurIPS): before each of the
  early steps the latent takes one gradient step on :func:`syngen_loss` (modifier maps pulled
  onto their noun's, both pushed away from the other words' maps), then classifier-free
  guidance runs at the updated latent.
* ``sgt`` (Kang et al. 2023, "Semantic Guidance Tuning for Text-To-Image Diffusion Models"):
  the guidance direction is corrected per concept of the prompt (:func:`sgt_combination`).

Both need to know the prompt's words: :func:`prompt_options` builds their options from the
prompts for a :class:`~reverie.pipelines._base.LatentPipeline` (``pipe.sample(prompt,
guidance="syngen")`` calls it), with the ``(modifier, noun)`` pairs read by
:func:`modifier_pairs` (the ``shapes`` grammar ``"a COLOUR SHAPE PLACE"``; other prompts need
``guidance_options={"pairs": [...]}``, spaCy's parser of the paper is not used).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from reverie.guidance import Call, register

__all__ = ["CrossAttentionRecorder", "cross_attention_layers", "modifier_pairs", "Binding",
           "bind", "symmetric_kl", "syngen_loss", "sgt_combination", "prompt_options",
           "syngen", "sgt"]


# ---------------------------------------------------------------------------------------------
# Cross-attention maps
# ---------------------------------------------------------------------------------------------


def cross_attention_layers(network: nn.Module) -> list[str]:
    """Names of ``network``'s cross-attention modules (diffusers ``Attention`` attending to the
    text: a UNet's ``attn2``); none is an error."""
    from diffusers.models.attention_processor import Attention

    names = [n for n, m in network.named_modules()
             if isinstance(m, Attention) and m.is_cross_attention]
    if not names:
        raise ValueError(f"{type(network).__name__} has no cross-attention layer (diffusers "
                         "Attention with is_cross_attention, e.g. a UNet2DConditionModel's "
                         "attn2); SynGen reads the text tokens' attention maps")
    return names


class CrossAttentionRecorder:
    """Records the cross-attention probabilities of ``network`` (module docstring).

    ``with recorder.record(): network(...)`` runs the cross-attention layers through diffusers'
    ``AttnProcessor`` and keeps each layer's ``softmax(Q K^T scale)`` as ``[B, heads, N, L]``
    (:attr:`probs`, by layer name); :meth:`maps` averages the layers with ``N = res^2``.
    ``res`` (tokens per side) defaults to a quarter of the latent side if layers of that size
    exist (Stable Diffusion's 16 of 64, as SynGen and Attend-and-Excite), else the finest."""

    def __init__(self, network: nn.Module, res: int | None = None):
        if res is not None and (isinstance(res, bool) or not isinstance(res, int) or res < 1):
            raise ValueError(f"res must be a positive int (tokens per side), got {res!r}")
        self.network, self.res = network, res
        self.names = cross_attention_layers(network)
        self.probs: dict[str, Tensor] = {}

    @contextmanager
    def record(self) -> Iterator[CrossAttentionRecorder]:
        from diffusers.models.attention_processor import AttnProcessor

        modules = dict(self.network.named_modules())
        saved = {n: modules[n].processor for n in self.names}
        self.probs = {}
        try:
            for n in self.names:
                modules[n].processor = AttnProcessor()  # the softmax it computes is recorded
                modules[n].get_attention_scores = self._scores(n, modules[n])
            yield self
        finally:
            for n, proc in saved.items():
                modules[n].processor = proc
                modules[n].__dict__.pop("get_attention_scores", None)

    def _scores(self, name: str, attn: nn.Module):
        own = type(attn).get_attention_scores

        def scores(query: Tensor, key: Tensor, mask: Tensor | None = None) -> Tensor:
            p = own(attn, query, key, mask)  # [B * heads, N, L], batch-major
            self.probs[name] = p.reshape(-1, attn.heads, *p.shape[1:])
            return p

        return scores

    def resolution(self) -> int:
        """The token-grid side whose layers :meth:`maps` averages (class docstring)."""
        sides = sorted({math.isqrt(p.shape[2]) for p in self.probs.values()}, reverse=True)
        if not sides:
            raise ValueError("no cross-attention was recorded: call the network inside "
                             "record()")
        if self.res is not None:
            if self.res not in sides:
                raise ValueError(f"no cross-attention layer at {self.res}x{self.res} tokens; "
                                 f"recorded sides: {sides}")
            return self.res
        return sides[0] // 4 if sides[0] // 4 in sides else sides[0]

    def maps(self) -> Tensor:
        """``[B, res^2, L]``: the recorded probabilities at :meth:`resolution`, averaged over
        heads and layers (each row sums to 1 over the tokens)."""
        n = self.resolution() ** 2
        chosen = [p.mean(dim=1) for p in self.probs.values() if p.shape[2] == n]
        return torch.stack(chosen).mean(dim=0)


# ---------------------------------------------------------------------------------------------
# SynGen
# ---------------------------------------------------------------------------------------------


def modifier_pairs(prompt: str) -> list[tuple[list[str], str]]:
    """``[(modifiers, noun)]`` of a ``shapes`` prompt (``"a red circle on the left"`` ->
    ``[(["red"], "circle")]``); other prompts are refused (give the pairs yourself)."""
    from reverie import shapes

    try:
        colour, shape, _ = shapes.parse_prompt(prompt)
    except ValueError:
        raise ValueError(f"cannot find (modifier, noun) pairs in {prompt!r}: only the shapes "
                         "grammar 'a COLOUR SHAPE PLACE' is parsed; pass pairs=[(modifier, "
                         "noun), ...] for other prompts") from None
    return [([list(shapes.COLOURS)[colour]], shapes.SHAPES[shape])]


def _pieces(tokenizer: Any, word: str) -> list[int]:
    return tokenizer(word, add_special_tokens=False).input_ids


def _find(ids: list[int], piece: list[int], used: set[int], what: str, prompt: str) -> list[int]:
    """Positions of the word ``piece`` in the prompt's token ids (first unused occurrence)."""
    for s in range(1, len(ids) - len(piece) + 1):
        span = list(range(s, s + len(piece)))
        if ids[s : s + len(piece)] == piece and not used & set(span):
            used.update(span)
            return span
    raise ValueError(f"the {what} is not a word of the prompt {prompt!r}")


@dataclass(frozen=True)
class Binding:
    """What ``syngen`` needs of the prompts: the ``recorder`` of the network's cross-attention,
    and per batch row the ``subtrees`` (``(modifiers, noun)`` with each word a list of token
    positions) and ``words`` (the positions of all the prompt's tokens but the start and end
    tokens: the "other words" of the negative loss). One row serves every batch row."""

    recorder: CrossAttentionRecorder
    subtrees: tuple[tuple[tuple[tuple[int, ...], ...], tuple[int, ...]], ...]
    words: tuple[tuple[int, ...], ...]


def bind(network: nn.Module, tokenizer: Any, prompts: Sequence[str],
         pairs: Sequence[Sequence[tuple[Any, str]]] | None = None,
         res: int | None = None) -> Binding:
    """A :class:`Binding` for ``prompts``: ``pairs[k]`` lists prompt ``k``'s ``(modifier,
    noun)`` pairs (a modifier a word or a list of words; one list for every prompt is
    accepted); default :func:`modifier_pairs`. A modifier or noun that is not a word of its
    prompt is an error."""
    recorder = CrossAttentionRecorder(network, res)
    if pairs is not None and pairs and isinstance(pairs[0], tuple):
        pairs = [pairs] * len(prompts)  # one list of pairs for every prompt
    if pairs is not None and len(pairs) != len(prompts):
        raise ValueError(f"{len(pairs)} lists of pairs for {len(prompts)} prompts")
    trees, words = [], []
    for k, prompt in enumerate(prompts):
        ids = tokenizer(prompt).input_ids
        used: set[int] = set()
        rows = []
        for mods, noun in (modifier_pairs(prompt) if pairs is None else pairs[k]):
            mods = [mods] if isinstance(mods, str) else list(mods)
            spans = tuple(tuple(_find(ids, _pieces(tokenizer, m), used, f"modifier {m!r}",
                                      prompt)) for m in mods)
            rows.append((spans, tuple(_find(ids, _pieces(tokenizer, noun), used,
                                            f"noun {noun!r}", prompt))))
        trees.append(tuple(rows))
        words.append(tuple(range(1, len(ids) - 1)))  # without <start> and <end>
    return Binding(recorder, tuple(trees), tuple(words))


def symmetric_kl(a: Tensor, b: Tensor) -> Tensor:
    """``(KL(p || q) + KL(q || p)) / 2`` of two attention maps, each normalised to a
    distribution over its pixels (SynGen's distance)."""
    p = (a / a.sum()).clamp_min(torch.finfo(a.dtype).tiny)
    q = (b / b.sum()).clamp_min(torch.finfo(b.dtype).tiny)
    return 0.5 * ((p * (p.log() - q.log())).sum() + (q * (q.log() - p.log())).sum())


def _word_kl(maps: Tensor, a: Sequence[int], b: Sequence[int]) -> Tensor:
    """The largest symmetric KL between the pieces of two words (SynGen's word pieces)."""
    return torch.stack([symmetric_kl(maps[:, i], maps[:, j]) for i in a for j in b]).max()


def syngen_loss(maps: Tensor, subtrees: Sequence, words: Sequence[int]) -> Tensor:
    """SynGen's loss (Rassin et al. 2023, eq. 3-5, as their ``compute_loss.py``) of one
    prompt's maps ``[N, L]`` (pixels x tokens): for each ``(modifiers, noun)`` subtree and each
    modifier ``m`` of it, ``S(m, n) - (mean_o S(n, o) + mean_o S(m, o)) / 2`` with ``S`` the
    symmetric KL of the pixel distributions and ``o`` the prompt's words outside the subtree."""
    loss = maps.new_zeros(())
    for mods, noun in subtrees:
        inside = {i for w in (*mods, noun) for i in w}
        outside = [(o,) for o in words if o not in inside]
        for m in mods:
            positive = _word_kl(maps, m, noun)  # modifier and noun attend to the same pixels
            negative = 0.0
            if outside:  # both attend away from the other words' pixels
                negative = -0.5 * (sum(_word_kl(maps, noun, o) for o in outside)
                                   + sum(_word_kl(maps, m, o) for o in outside)) / len(outside)
            loss = loss + positive + negative
    return loss


def _binding_loss(binding: Binding, maps: Tensor) -> Tensor:
    """Per-row SynGen losses ``[B]`` of recorded maps ``[B, N, L]``."""
    rows = maps.shape[0]
    if len(binding.subtrees) not in (1, rows):
        raise ValueError(f"the binding has {len(binding.subtrees)} prompts for a batch of {rows}")
    pick = (lambda seq, b: seq[0]) if len(binding.subtrees) == 1 else (lambda seq, b: seq[b])
    return torch.stack([syngen_loss(maps[b], pick(binding.subtrees, b), pick(binding.words, b))
                        for b in range(rows)])


def syngen_update(call: Call, binding: Binding, step_size: float) -> tuple[Tensor, Tensor]:
    """``(x - step_size * grad_x L(x), L(x))``: SynGen's latent update (Rassin et al. 2023,
    eq. 6), ``L`` the per-row loss of the conditional model's maps at ``(x, t)``."""
    with torch.enable_grad():
        x = call.x.detach().requires_grad_(True)
        with binding.recorder.record():
            call.guided.denoiser(x, call.t, **call.cond)
        loss = _binding_loss(binding, binding.recorder.maps())
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return (call.x - step_size * grad).detach(), loss.detach()


def _syngen_hook(guided):
    """The step was taken from ``x`` with the prediction at ``x' = x + delta``; every sampler
    listed is ``x_{i+1} = (sigma_{i+1} / sigma_i) x + (terms in the predictions)``, so adding
    ``(sigma_{i+1} / sigma_i) delta`` makes it the step from ``x'`` (SynGen's order)."""

    def hook(state, schedule):
        last = guided.memory.pop("syngen_last", None)
        i = state.i - 1
        if last is None or not math.isclose(last[0], float(schedule.t[i]), rel_tol=1e-6):
            return None
        ratio = schedule.sigma[i + 1] / schedule.sigma[i]
        return replace(state, x=state.x + ratio * last[1].to(state.x.dtype))

    return hook


@register("syngen", family="semantic", needs=("uncond",), schedulable=False,
          hook=_syngen_hook, samplers=("ddim", "dpmpp_2m"),
          options={"binding": None, "step_size": 20.0, "fraction": 0.5},
          paper="Rassin et al. 2023 (Linguistic Binding in Diffusion Models: Enhancing "
          "Attribute Correspondence through Attention Map Alignment), NeurIPS",
          description="SynGen: at the noisiest `fraction` of the time range the latent takes "
          "one step x -= step_size grad L (L: modifier / noun cross-attention maps aligned, "
          "other words' maps pushed away; binding= from reverie.guidance.semantic.bind, built "
          "by the pipelines), then CFG at the updated latent (a step hook moves the state "
          "there; exact for deterministic ddim and dpmpp_2m); no binding: CFG")
def syngen(call: Call, w: float, binding: Binding | None, step_size: float,
           fraction: float) -> Tensor:
    if binding is not None and not isinstance(binding, Binding):
        raise TypeError("binding must be a reverie.guidance.semantic.Binding (bind(...)), got "
                        f"{type(binding).__name__}")
    proc, tf = call.process, float(call.t.reshape(-1)[0])
    if binding is not None and tf >= proc.t_max - fraction * (proc.t_max - proc.t_min):
        x, loss = syngen_update(call, binding, float(step_size))
        call.memory["syngen_last"] = (tf, x - call.x)
        call.memory.setdefault("syngen_losses", []).append(loss)
        call = Call(call.guided, x, call.t, call.cond)  # the predictions at the new latent
    d_c, d_u = call.pair()
    return d_u + w * (d_c - d_u)


# ---------------------------------------------------------------------------------------------
# Semantic Guidance Tuning
# ---------------------------------------------------------------------------------------------


def _flat(x: Tensor) -> Tensor:
    return x.flatten(1).double()


def _perp(x: Tensor, y: Tensor) -> Tensor:
    """The part of ``x`` orthogonal to ``y``, per sample (``x`` itself where ``y = 0``)."""
    fx, fy = _flat(x), _flat(y)
    yy = (fy * fy).sum(1, keepdim=True)
    coef = torch.where(yy > 0, (fx * fy).sum(1, keepdim=True) / yy.clamp_min(1e-300), 0.0)
    return (fx - coef * fy).view_as(x).to(x.dtype)


def _abs_cos(x: Tensor, y: Tensor) -> Tensor:
    return torch.nn.functional.cosine_similarity(_flat(x), _flat(y), dim=1).abs().clamp(max=1.0)


def _top_entries(x: Tensor, q: Tensor) -> Tensor:
    """``x`` where ``|x|`` reaches its ``q``-quantile (per sample and channel for images
    ``[B, C, ...]``, per sample otherwise), zero elsewhere."""
    flat = x.abs().flatten(2) if x.ndim > 2 else x.abs().unsqueeze(1)
    cut = torch.stack([torch.quantile(flat[b].double(), float(q[b]), dim=-1)
                       for b in range(x.shape[0])])  # [B, C]
    cut = cut.view(*cut.shape, *[1] * (x.ndim - 2)) if x.ndim > 2 else cut
    return torch.where(x.abs().double() >= cut, x, torch.zeros_like(x))


def sgt_combination(e_u: Tensor, e_c: Tensor, e_concepts: Sequence[Tensor], w: float,
                    concept_scale: float, threshold_subject: float | str = "auto",
                    threshold_abstract: float | str = 0.7,
                    upper_bound: float = 0.8) -> tuple[Tensor, Tensor]:
    """Semantic Guidance Tuning's guided prediction and the concepts' similarities ``[B, K+1]``
    (Kang et al. 2023, as their ``concept_diffusion.py``), per sample, from the unconditional
    ``e_u``, prompt ``e_c`` and concept ``e_k`` predictions:

    * scores: prompt ``s = e_c - e_u``, subjects ``s_k = e_k - e_u``, and the abstract concept
      ``s_a = s`` without its part along ``sum_k s_k`` (what the prompt says beyond its
      subjects); similarities ``r = |cos(s, .)|``;
    * a subject the guidance diverges from (``r_k < threshold_subject``, ``"auto"``:
      ``1 / (K + 1)``) adds ``concept_scale * s_k`` orthogonal to ``s``; one it is too close to
      (``r_k > upper_bound``) subtracts it;
    * if ``r_a < threshold_abstract`` (``"auto"`` as above), ``concept_scale * s_a`` is added
      at its entries of magnitude above their ``r_a``-quantile (per channel);
    * result: ``e_u + w s + (those corrections)``. Without concepts ``s_a = s``, ``r_a = 1``:
      classifier-free guidance.

    What is reconstructed: beyond the abstract (concepts decomposed from the prompt, the
    guidance monitored against each, steered towards those it diverges from) the paper's text
    was not available here; the rules above are those of the authors' public code
    (``korguy/Concept-Diffusion``, ``pipelines/concept_diffusion.py``, whose options its README
    documents; defaults from its ``configs/default.yaml``: warm-up 0 and cool-down 50 of 50
    steps, i.e. every step, here ``concept_interval=None``), per sample instead of for one
    image. Its later variant (``our_pipeline.py``: a momentum on the corrections and
    similarities averaged over a window of steps) is not implemented.
    """
    k = len(e_concepts)
    auto = 1.0 / (k + 1)
    t_s = auto if threshold_subject == "auto" else float(threshold_subject)
    t_a = auto if threshold_abstract == "auto" else float(threshold_abstract)
    s = e_c - e_u
    subjects = [e - e_u for e in e_concepts]
    total = sum(subjects) if subjects else torch.zeros_like(s)
    abstract = _perp(s, total)  # the concept the subjects do not cover
    sims = torch.stack([_abs_cos(s, g) for g in (*subjects, abstract)], dim=1)  # [B, K+1]
    view = (-1, *[1] * (s.ndim - 1))
    out = e_u + w * s
    for j, g in enumerate(subjects):
        h = _perp(concept_scale * g, s)  # the subject's part the prompt's guidance misses
        sign = (sims[:, j] < t_s).double() - (sims[:, j] > upper_bound).double()
        out = out + sign.view(view).to(s.dtype) * h
    low = (sims[:, k] < t_a).view(view).to(s.dtype)
    out = out + low * _top_entries(concept_scale * abstract, sims[:, k])
    return out, sims


@register("sgt", family="semantic", needs=("uncond",), schedulable=False,
          options={"concepts": None, "concept_scale": 7.5, "threshold_subject": "auto",
                   "threshold_abstract": 0.7, "upper_bound": 0.8, "concept_interval": None,
                   "space": "eps"},
          paper="Kang et al. 2023 (Semantic Guidance Tuning for Text-To-Image Diffusion "
          "Models), arXiv 2312.15964; reconstructed from the authors' Concept-Diffusion code",
          description="semantic guidance tuning: CFG whose direction is corrected towards each "
          "subject concept it diverges from (|cos| below threshold_subject, 'auto' = 1/(K+1)) "
          "and towards the abstract rest of the prompt (below threshold_abstract), see "
          "reverie.guidance.semantic.sgt_combination; concepts= a list of conditioning dicts "
          "(one per concept, built from the prompts by the pipelines); concept_interval=(t_lo, "
          "t_hi): corrections only there; no concepts: CFG")
def sgt(call: Call, w: float, concepts: Sequence[Mapping[str, Any]] | None,
        concept_scale: float, threshold_subject: float | str, threshold_abstract: float | str,
        upper_bound: float, concept_interval: tuple[float, float] | None,
        space: str) -> Tensor:
    from reverie.guidance.cfg import _space

    space = _space(space)
    concepts = list(concepts or [])
    if not all(isinstance(c, Mapping) for c in concepts):
        raise TypeError("concepts must be a list of conditioning dicts (keyword -> value), one "
                        "per concept")
    d_c, d_u = call.pair()
    tf = float(call.t.reshape(-1)[0])
    if concept_interval is not None and not concept_interval[0] <= tf <= concept_interval[1]:
        concepts = []  # warm-up / cool-down: plain CFG
    e_k = [call.convert(call.guided.denoiser(call.x, call.t, **{**call.cond, **_rows(c, call.x)}),
                        space) for c in concepts]
    out, sims = sgt_combination(call.convert(d_u, space), call.convert(d_c, space), e_k, w,
                                float(concept_scale), threshold_subject, threshold_abstract,
                                float(upper_bound))
    call.memory.setdefault("sgt_similarities", []).append(sims)
    return call.back(out, space)


def _rows(cond: Mapping[str, Any], x: Tensor) -> dict[str, Any]:
    from reverie.guidance import _rows_for

    return {k: _rows_for(v, x) for k, v in cond.items()}


# ---------------------------------------------------------------------------------------------
# Pipelines
# ---------------------------------------------------------------------------------------------


def prompt_options(pipe: Any, method: str, options: Mapping[str, Any] | None,
                   prompts: Sequence[str] | Callable[[], Sequence[str]],
                   n: int = 1) -> dict[str, Any]:
    """``guidance_options`` of ``pipe.sample(prompts, n=n, guidance=method)`` with what
    ``syngen`` / ``sgt`` need of the prompts: ``binding`` (:func:`bind` on the pipeline's
    network and tokenizer, with the options ``pairs`` and ``res``) or ``concepts`` (the
    conditioning of each concept; the option ``concepts`` may give their texts per prompt,
    default the noun phrases ``"a MODIFIERS NOUN"`` of the pairs). Other methods' options are
    unchanged. ``prompts`` may be a function returning the texts, called only for ``syngen``
    / ``sgt`` (a class-conditional pipeline's "prompts" are labels, not texts)."""
    options = dict(options or {})
    if method not in ("syngen", "sgt"):
        return options
    prompts = prompts() if callable(prompts) else prompts
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(f"{method} needs a pipeline with one CLIP tokenizer (Stable Diffusion "
                         f"1.x/2.x); {type(pipe).__name__} has none")
    pairs = options.pop("pairs", None)
    if method == "syngen" and options.get("binding") is None:
        binding = bind(pipe.network, tokenizer, prompts, pairs, options.pop("res", None))
        if n > 1:
            binding = Binding(binding.recorder,
                              *[tuple(r for r in rows for _ in range(n)) for rows in
                                (binding.subtrees, binding.words)])
        options["binding"] = binding
    if method == "sgt":
        texts = options.get("concepts")
        if texts is None or (texts and isinstance(texts[0], (str, list, tuple))):
            options["concepts"] = _concept_conditioning(pipe, prompts, texts, pairs, n)
    return options


def _concept_conditioning(pipe: Any, prompts: Sequence[str], texts: Any, pairs: Any,
                          n: int) -> list[dict[str, Tensor]]:
    if texts is None:  # the noun phrases of the (modifier, noun) pairs
        per = [pairs] * len(prompts) if pairs and isinstance(pairs[0], tuple) else pairs
        texts = [[" ".join(["a", *([m] if isinstance(m, str) else m), noun])
                  for m, noun in (modifier_pairs(p) if per is None else per[k])]
                 for k, p in enumerate(prompts)]
    elif texts and isinstance(texts[0], str):
        texts = [list(texts)] * len(prompts)  # one list for every prompt
    if len(texts) != len(prompts) or len({len(t) for t in texts}) != 1:
        raise ValueError("concepts: give one list of concept texts per prompt, each as long "
                         f"(got {[len(t) for t in texts]} for {len(prompts)} prompts)")
    out = []
    for j in range(len(texts[0])):
        cond, _ = pipe.encode_prompt([t[j] for t in texts])
        out.append({k: v.repeat_interleave(n, 0) for k, v in cond.items()})
    return out
