"""reverie.accelerate.pnp (plug-and-play distillation, paper 32) on the bundled class-conditional
two-moons model (null class 2): a guide trained at CFG scale 3 makes one guided call per step
land near CFG's samples at scale 3 (sliced-W2), where the untrained guide (the plain
conditional model) and a guide trained at scale 1.5 do not."""

import pytest
import torch

import reverie
from reverie.accelerate import METHODS
from reverie.accelerate.pnp import pnp_distill
from reverie.data import two_moons
from reverie.guidance import guide
from reverie.metrics import sliced_wasserstein


def test_guide_reproduces_cfg_at_its_scale_in_one_call():
    model = reverie.load("two-moons")
    base, null = model.denoiser, model.denoiser.fn.null_label
    data, labels = two_moons(4000, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(600, 2, generator=torch.Generator().manual_seed(2))
    c = (torch.arange(600) >= 300).long()
    cond = {"class_labels": c}
    cfg = guide(base, "cfg", 3.0, uncond={"class_labels": torch.full_like(c, null)})
    ref = reverie.sample(cfg, noise, sampler="dpmpp_2m", steps=20, cond=cond)

    def sw(scale, iters):
        pnp = pnp_distill(base, data, labels, scale=scale, null_label=null, iters=iters,
                          batch=128)
        x = reverie.sample(pnp.denoiser, noise, sampler="dpmpp_2m", steps=20, cond=cond)
        return sliced_wasserstein(x, ref, 128, torch.Generator().manual_seed(3))

    got = sw(3.0, 200)
    assert got < 0.45 * sw(3.0, 0)  # sibling: the untrained guide (= the conditional model)
    assert got < 0.65 * sw(1.5, 200)  # sibling: a guide trained at another scale
    assert METHODS["pnp_distill"].kind == "distill"


def test_pnp_errors():
    base = reverie.load("two-moons").denoiser
    x, y = torch.zeros(8, 2), torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match="data must be \\[n, dim\\] with labels \\[n\\]"):
        pnp_distill(base, x, y[:4], scale=3.0, null_label=2)
    with pytest.raises(TypeError, match="scale must be a number"):
        pnp_distill(base, x, y, scale="3", null_label=2)
    with pytest.raises(TypeError, match="base must be a reverie denoiser"):
        pnp_distill(lambda x, t: x, x, y, scale=3.0, null_label=2)
    with pytest.raises(ValueError, match="iters must be an int >= 0"):
        pnp_distill(base, x, y, scale=3.0, null_label=2, iters=-1)
