"""SynGen and Semantic Guidance Tuning (reverie.guidance.semantic): the cross-attention recorder
against a direct softmax(QK^T), SynGen's loss on hand-built maps and its update on the bundled
text-to-image model, SGT against a hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tests.conftest import gen, tiny_unet

import reverie
from reverie import shapes
from reverie.guidance import Call, guide
from reverie.guidance.semantic import (
    CrossAttentionRecorder,
    bind,
    prompt_options,
    sgt_combination,
    symmetric_kl,
    syngen_loss,
    syngen_update,
)

PROMPTS = [shapes.prompt(*shapes.HELD_OUT[0]), shapes.prompt(*shapes.TRAIN_COMBOS[7])]


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return reverie.load("shapes")


def test_recorder_maps_are_softmax_qk(pipe):
    """The recorded maps sum to 1 over the tokens, one layer's equal softmax(Q K^T / sqrt(d))
    recomputed from its inputs (a 15% larger scale is rejected), the prediction is unchanged
    by recording, and the processors come back."""
    unet = pipe.network
    cond, _ = pipe.encode_prompt(PROMPTS)
    ehs = cond["encoder_hidden_states"]
    x, t = torch.randn(2, 4, 8, 8, generator=gen(0)), torch.tensor([500.0, 500.0])
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    layer = unet.get_submodule(name)
    seen = {}
    handle = layer.register_forward_pre_hook(
        lambda m, args, kw: seen.update(h=args[0], e=kw["encoder_hidden_states"]),
        with_kwargs=True)
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    rec = CrossAttentionRecorder(unet)
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=ehs).sample
        with rec.record():
            recorded = unet(x, t, encoder_hidden_states=ehs).sample
    handle.remove()
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before
    assert float((plain - recorded).abs().max()) < 1e-5
    maps = rec.maps()
    assert rec.resolution() == 8 and maps.shape == (2, 64, 16)  # 8x8 pixels, 16 tokens
    assert float((maps.sum(-1) - 1).abs().max()) < 1e-5

    def direct(scale):
        heads = layer.heads
        q = layer.to_q(seen["h"]).unflatten(-1, (heads, -1)).transpose(1, 2)  # [B, h, N, d]
        k = layer.to_k(seen["e"]).unflatten(-1, (heads, -1)).transpose(1, 2)
        return torch.softmax(scale * q @ k.transpose(-1, -2), dim=-1)

    with torch.no_grad():
        d = layer.to_q.out_features // layer.heads
        exact, wrong = direct(d**-0.5), direct(1.15 * d**-0.5)
    assert float((rec.probs[name] - exact).abs().max()) < 1e-5
    assert float((rec.probs[name] - wrong).abs().max()) > 1e-3


def _maps(assign: dict[int, slice], n=16, tokens=6) -> torch.Tensor:
    """Hand-built maps ``[n, tokens]``: token i spread evenly over the pixels ``assign[i]``."""
    m = torch.full((n, tokens), 1e-6, dtype=torch.float64)
    for i, where in assign.items():
        m[where, i] = 1.0
    return m / m.sum(dim=1, keepdim=True)


def test_syngen_loss_on_hand_built_maps():
    """Identical modifier and noun maps: the positive term is 0 and the loss minimal; a
    modifier attending elsewhere than its noun, onto the other words' pixels, costs more."""
    left, right = slice(0, 8), slice(8, 16)
    tree, words = [(((1,),), (2,))], (1, 2, 3, 4)  # "red" (1) modifies "circle" (2)
    bound = _maps({1: left, 2: left, 3: right, 4: right})
    split = _maps({1: left, 2: right, 3: left, 4: right})
    a, b = bound[:, 1], bound[:, 3]
    assert float(symmetric_kl(a, a)) == 0.0
    assert math.isclose(float(symmetric_kl(a, b)), float(symmetric_kl(b, a)))
    only_positive = syngen_loss(bound, tree, (1, 2))  # no other words: the positive term
    assert float(only_positive) == 0.0
    assert float(syngen_loss(split, tree, (1, 2))) > 5.0
    assert float(syngen_loss(bound, tree, words)) < float(syngen_loss(split, tree, words)) - 5


def test_syngen_update_lowers_its_loss(pipe):
    """On the bundled model, one SynGen step x - a grad L lowers L at the new latent; the step
    with the opposite sign raises it."""
    cond, neg = pipe.encode_prompt(PROMPTS)
    binding = bind(pipe.network, pipe.tokenizer, PROMPTS)
    assert binding.subtrees[0] == ((((2,),), (3,)),)  # "a red circle ...": red=2, circle=3
    den = guide(pipe.base_denoiser, "syngen", 1.5, uncond=neg, binding=binding)
    x, t = torch.randn(2, 4, 8, 8, generator=gen(1)), torch.full((2,), 600.0)

    def loss_after(step):
        call = Call(den, x, t, dict(cond))
        moved, before = syngen_update(call, binding, step)
        _, after = syngen_update(Call(den, moved, t, dict(cond)), binding, step)
        return float(before.sum()), float(after.sum())

    before, down = loss_after(200.0)
    _, up = loss_after(-200.0)
    assert down < before - 1e-4 and up > before + 1e-4, (before, down, up)


def test_syngen_sampling_is_the_reference_loop(pipe):
    """guidance="syngen" with DDIM equals SynGen's loop written out (update the latent at the
    early steps, then a CFG step from it); without its step hook it does not; step size 0 and
    fraction 0 are CFG."""
    cond, neg = pipe.encode_prompt(PROMPTS)
    x0 = torch.randn(2, 4, 8, 8, generator=gen(2))
    w, step, steps = 1.5, 300.0, 4

    def run(guidance, **opts):
        den = pipe.denoiser(cond, neg, w, guidance, prompt_options(pipe, guidance, opts, PROMPTS))
        return reverie.sample(den, x0, sampler="ddim", steps=steps), den

    ours, den = run("syngen", step_size=step)
    sch = reverie.samplers.Schedule.build(pipe.process, reverie.samplers.resolve_grid(
        reverie.SAMPLERS["ddim"], pipe.process, steps, None))
    binding, cfg = den.guided.options["binding"], guide(pipe.base_denoiser, "cfg", w, uncond=neg)
    x = x0 * sch.sigma[0]  # reverie.sample starts from sigma(t_0) * noise
    for i in range(steps):
        t = torch.full((2,), sch.t[i])
        if sch.t[i] >= 999 / 2:  # the first half of the time range: SynGen's update
            x, _ = syngen_update(Call(den.guided, x, t, dict(cond)), binding, step)
        d = cfg(x, t, **cond)
        eps = (x - sch.alpha[i] * d) / sch.sigma[i]
        x = sch.alpha[i + 1] * d + sch.sigma[i + 1] * eps
    assert float((ours - x).abs().max()) < 1e-4
    den.step_hook = None  # the prediction at the moved latent, the step from the old one
    no_hook = reverie.sample(den, x0, sampler="ddim", steps=steps)
    assert float((no_hook - x).abs().max()) > 1e-3
    plain, _ = run("cfg")
    assert float((plain - x).abs().max()) > 1e-3
    for opts in ({"step_size": 0.0}, {"fraction": 0.0}):
        assert float((run("syngen", **opts)[0] - plain).abs().max()) < 1e-5


def _hand_sgt(e_u, e_c, e_k, w, lam, t_s, t_a, upper):
    """SGT's combination per sample, written out with numpy (sgt_combination's docstring)."""
    out = []
    for b in range(e_u.shape[0]):
        u, c, ks = e_u[b], e_c[b], [e[b] for e in e_k]
        s = c - u
        subj = [k - u for k in ks]
        tot = sum(subj)
        ab = s - (s * tot).sum() / (tot * tot).sum() * tot
        cos = lambda a, z: abs((a * z).sum()) / np.sqrt((a * a).sum() * (z * z).sum())  # noqa
        g = u + w * s
        for sk in subj:
            h = lam * sk - (lam * sk * s).sum() / (s * s).sum() * s
            if cos(s, sk) < t_s:
                g = g + h
            if cos(s, sk) > upper:
                g = g - h
        r = cos(s, ab)
        if r < t_a:
            a = lam * ab
            for ch in range(a.shape[0]):  # entries above the r-quantile of |a| per channel
                cut = np.quantile(np.abs(a[ch]).ravel(), r)
                g[ch] = g[ch] + np.where(np.abs(a[ch]) >= cut, a[ch], 0.0)
        out.append(g)
    return np.stack(out)


def test_sgt_combination_against_hand_computation():
    """SGT's combination equals its hand computation on synthetic predictions where each
    branch fires (a subject the guidance misses, one it over-follows, one in between; an
    abstract rest below its threshold); a sibling without the orthogonal projection or with
    the abstract rest unmasked is rejected; without concepts it is CFG."""
    g = gen(3)
    e_u = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    s = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    other = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    mix = torch.tensor([0.05, 5.0, 1.0], dtype=torch.float64).view(3, 1, 1, 1)
    e_c = e_u + s
    e_k = [e_u + mix * s + other, e_u + 0.3 * s + 0.2 * other]  # two subjects
    w, lam = 2.0, 3.0
    out, sims = sgt_combination(e_u, e_c, e_k, w, lam, "auto", 0.7, 0.8)
    ref = _hand_sgt(e_u.numpy(), e_c.numpy(), [e.numpy() for e in e_k], w, lam, 1 / 3, 0.7, 0.8)
    assert float(np.abs(out.numpy() - ref).max()) < 1e-10
    r = sims.numpy()
    assert r[0, 0] < 1 / 3 < 0.8 < r[1, 0] and 1 / 3 < r[2, 0] < 0.8 and (r[:, 2] < 0.7).any()
    cfg = (e_u + w * s).numpy()
    assert float(np.abs(out.numpy() - cfg).max()) > 0.1
    # siblings: subject added whole (no projection), abstract rest unmasked
    plain_add = sgt_combination(e_u, e_c, e_k, w, lam, "auto", 0.0, 2.0)[0]  # abstract off
    s_dir = s / s.flatten(1).norm(dim=1).view(3, 1, 1, 1)
    whole = plain_add + (lam * (e_k[0] - e_u) * s_dir).sum(dim=(1, 2, 3), keepdim=True) * s_dir
    ref_off = _hand_sgt(e_u.numpy(), e_c.numpy(), [e.numpy() for e in e_k], w, lam, 1 / 3,
                        0.0, 2.0)
    assert float(np.abs(plain_add.numpy() - ref_off).max()) < 1e-10
    assert float(np.abs(whole.numpy() - ref_off).max()) > 1e-2
    none, _ = sgt_combination(e_u, e_c, [], w, lam)
    assert float((none - (e_u + w * s)).abs().max()) < 1e-12


class _Synthetic(reverie.DenoiserBase):
    """D(x, t, c=k) = fixed prediction k: a prompt (0), null (1) and concept (2) branch."""

    process = reverie.VP.linear()

    def __init__(self, preds):
        self.preds = preds

    def __call__(self, x, t, c):
        return torch.stack([self.preds[int(k)][b % 3] for b, k in enumerate(c)])  # CFG: 2 x 3


def test_sgt_method_is_the_combination():
    """guide(..., "sgt", concepts=[...]) on a synthetic conditional denoiser is
    sgt_combination of its branch predictions (eps space, or x0: the same); no concepts: CFG."""
    g = gen(4)
    preds = [torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    den = _Synthetic(preds)
    x = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    c = {"c": torch.zeros(3, dtype=torch.long)}
    null, concept = {"c": torch.ones(1, dtype=torch.long)}, {"c": torch.full((1,), 2)}
    want, _ = sgt_combination(preds[1], preds[0], [preds[2]], 2.0, 7.5)
    for space in ("eps", "x0"):
        got = guide(den, "sgt", 2.0, uncond=null, concepts=[concept], space=space)(x, 300.0, **c)
        assert float((got - want).abs().max()) < 1e-9
    cfg = guide(den, "sgt", 2.0, uncond=null)(x, 300.0, **c)
    assert float((cfg - (preds[1] + 2.0 * (preds[0] - preds[1]))).abs().max()) < 1e-12


def test_pipeline_sgt_and_bad_input(pipe):
    """pipe.sample(guidance="sgt") builds the concepts "a COLOUR SHAPE" and changes the images;
    a modifier not in the prompt, a prompt outside the shapes grammar without pairs and a
    network without cross-attention are one-line errors."""
    kw = dict(steps=3, guidance_scale=1.5, output_type="latent")
    a = pipe.sample(PROMPTS, generator=gen(5), guidance="sgt", **kw)
    b = pipe.sample(PROMPTS, generator=gen(5), **kw)
    assert a.shape == b.shape and float((a - b).abs().max()) > 1e-3
    opts = prompt_options(pipe, "sgt", {}, PROMPTS, n=2)
    assert [v["encoder_hidden_states"].shape[0] for v in opts["concepts"]] == [4]
    with pytest.raises(ValueError, match="modifier 'purple' is not a word"):
        bind(pipe.network, pipe.tokenizer, PROMPTS[:1], [("purple", "circle")])
    with pytest.raises(ValueError, match="only the shapes grammar"):
        prompt_options(pipe, "syngen", {}, ["a cat and a dog"])
    with pytest.raises(ValueError, match="no cross-attention layer"):
        CrossAttentionRecorder(tiny_unet())
    with pytest.raises(ValueError, match="no cross-attention layer at 5x5"):
        rec = CrossAttentionRecorder(pipe.network, res=5)
        with torch.no_grad(), rec.record():
            pipe.network(torch.zeros(1, 4, 8, 8), torch.tensor([1.0]),
                         encoder_hidden_states=torch.zeros(1, 16, 64))
        rec.maps()
    with pytest.raises(ValueError, match="works with ddim, dpmpp_2m"):
        pipe.sample(PROMPTS, sampler="heun", guidance="syngen", **kw)


def test_cli_runs_syngen_on_the_pipeline_only(tmp_path, capsys):
    """`reverie sample --guidance syngen` runs on the text-to-image model with the prompt's
    pairs (or given ones) and is a one-line error on a model without a prompt."""
    from reverie.cli import main

    out = tmp_path / "s.png"
    rc = main(["sample", "--model", "shapes", "--prompt", PROMPTS[0], "--guidance", "syngen",
               "--option", "pairs=[('red', 'circle')]", "--n", "1", "--steps", "2",
               "--quiet", "--out", str(out)])
    assert rc == 0 and out.is_file()
    rc = main(["sample", "--model", "two-moons", "--guidance", "sgt", "--n", "2", "--steps",
               "2", "--quiet", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "reads a text-to-image pipeline's prompt" in err
