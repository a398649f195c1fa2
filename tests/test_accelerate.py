"""reverie.accelerate: block caching (DeepCache, A-SDM feature inheritance) through forward hooks
on tiny diffusers U-Nets and DiTs, and ParaStep's reuse-then-predict rounds."""

import math

import diffusers
import pytest
import torch

import reverie
from reverie.accelerate import (
    METHODS,
    BlockCache,
    deepcache,
    deepcache_blocks,
    feature_inheritance,
    nonuniform_refresh,
    parastep,
    uniform_refresh,
)
from reverie.process import VPCosine
from reverie.reference.gaussian import Gaussian


def tiny_unet(seed: int = 0) -> diffusers.UNet2DModel:
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16, 16), norm_num_groups=4, attention_head_dim=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    ).eval()


def tiny_dit(seed: int = 0) -> diffusers.DiTTransformer2DModel:
    torch.manual_seed(seed)
    net = diffusers.DiTTransformer2DModel(
        sample_size=4, num_layers=6, patch_size=2, attention_head_dim=4, num_attention_heads=2,
        in_channels=2, out_channels=2, num_embeds_ada_norm=10, norm_type="ada_norm_zero",
        norm_elementwise_affine=False)
    with torch.no_grad():  # ada_norm_zero starts as the identity: make the blocks do something
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def unet_denoiser(net):
    proc = VPCosine()
    return reverie.Denoiser(lambda x, t: net(x, t * 1000).sample, proc, "eps")


def dit_denoiser(net):
    proc = VPCosine()
    labels = torch.zeros(4, dtype=torch.long)
    return reverie.Denoiser(
        lambda x, t: net(x, t * 1000, class_labels=labels[: x.shape[0]]).sample, proc, "eps")


def _run(den, steps: int, shape=(4, 1, 8, 8)) -> torch.Tensor:
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    return reverie.sample(den, noise, sampler="ddim", steps=steps)


def test_registry_names_the_methods():
    assert {"deepcache", "feature_inheritance", "parastep"} <= set(METHODS)
    assert METHODS["deepcache"].kind == "cache"
    with pytest.raises(ValueError, match="unknown acceleration method 'nope'; expected one of"):
        METHODS["nope"]


@pytest.mark.parametrize("make", ["deepcache", "feature_inheritance"])
def test_interval_one_equals_the_plain_run_bitwise(make):
    net = tiny_unet()
    den = unet_denoiser(net)
    plain = _run(den, 6)
    with METHODS[make].fn(net, 6, interval=1) as cache:
        cached = _run(den, 6)
    assert torch.equal(cached, plain)
    assert (cache.full_calls, cache.partial_calls) == (6, 0)
    with deepcache(net, 6, interval=2) as cache:  # sibling: real reuse changes the result
        reused = _run(den, 6)
    assert not torch.allclose(reused, plain, atol=1e-4)
    assert (cache.full_calls, cache.partial_calls) == (3, 3)
    assert "forward" not in net.mid_block.__dict__  # removed: the network is itself again
    assert torch.equal(_run(den, 6), plain)


def test_partial_call_reuses_the_last_full_calls_deep_features():
    """On a partial call DeepCache's output equals the plain network with the input of the
    shallow up block replaced (an ordinary PyTorch forward hook) by its value at the last full
    call; a cache that is never refreshed fails the same check."""
    net = tiny_unet()
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(2, 1, 8, 8, generator=g) for _ in range(3)]
    ts = [torch.tensor(900.0), torch.tensor(700.0), torch.tensor(500.0)]
    deep = net.up_blocks[1]  # the output DeepCache keeps for branch 0 (3 levels)
    seen = []
    h = deep.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        net(xs[1], ts[1])
    h.remove()
    h = deep.register_forward_hook(lambda m, i, o: seen[0])
    with torch.no_grad():
        reference = net(xs[2], ts[2]).sample
    h.remove()
    ran = []
    probe = net.mid_block.resnets[0].register_forward_hook(lambda *a: ran.append(1))
    outs = {}
    for name, flags in [("refreshed", [True, True, False]), ("stale", [True, False, False])]:
        blocks, mode = deepcache_blocks(net, 0)
        with BlockCache(net, blocks, flags, mode) as cache, torch.no_grad():
            outs[name] = [net(x, t).sample for x, t in zip(xs, ts)][-1]
        assert cache.full_calls == sum(flags)
    probe.remove()
    assert len(ran) == 2 + 1  # the deep blocks ran on the full calls only
    torch.testing.assert_close(outs["refreshed"], reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(outs["stale"], reference, atol=1e-3)


def test_transformer_blocks_are_cached_as_residuals():
    net = tiny_dit()
    den = dit_denoiser(net)
    shape = (4, 2, 4, 4)
    plain = _run(den, 6, shape)
    blocks, mode = deepcache_blocks(net, 0)
    assert blocks == [f"transformer_blocks.{i}" for i in range(1, 5)] and mode == "residual"
    with deepcache(net, 6, interval=1):
        assert torch.equal(_run(den, 6, shape), plain)
    ran = []
    probe = net.transformer_blocks[2].attn1.register_forward_hook(lambda *a: ran.append(1))
    with deepcache(net, 6, interval=3) as cache:
        reused = _run(den, 6, shape)
    probe.remove()
    assert (cache.full_calls, cache.partial_calls, len(ran)) == (2, 4, 2)
    assert not torch.allclose(reused, plain, atol=1e-4)
    assert (reused - plain).abs().max() < 0.5 * plain.abs().max()  # a perturbation, not noise


def test_schedules_count_full_calls():
    assert uniform_refresh(7, 3) == [True, False, False, True, False, False, True]
    for steps, k in [(50, 3), (20, 2), (10, 5), (9, 9)]:
        flags = nonuniform_refresh(steps, k)
        full = [i for i, f in enumerate(flags) if f]
        assert len(full) == math.ceil(steps / k) and full[0] == 0
    full = [i for i, f in enumerate(nonuniform_refresh(50, 5, center=15)) if f]
    gaps = [b - a for a, b in zip(full, full[1:])]
    near = min(gaps[i] for i in range(len(gaps)) if abs(full[i] - 15) <= 5)
    assert near < gaps[-1] and near < gaps[0]  # denser around the centre
    net = tiny_unet()
    den = unet_denoiser(net)
    with deepcache(net, 10, 4, schedule="nonuniform") as c:
        _run(den, 10)
    flags = nonuniform_refresh(10, 4)
    assert c.full_calls == sum(flags) == 3 and c.partial_calls == 7
    with feature_inheritance(net, 10, when="late") as c:
        _run(den, 10)
    assert (c.full_calls, c.partial_calls) == (5 + 3, 2)


def test_bad_input_is_one_line_errors():
    net = tiny_unet()
    for kw, msg in [({"interval": 0}, r"interval must be in \[1, 6\], got 0"),
                    ({"interval": 7}, r"interval must be in \[1, 6\], got 7"),
                    ({"branch": 3}, r"branch must be in \[0, 2\], got 3"),
                    ({"schedule": "cosine"}, "unknown schedule 'cosine'")]:
        with pytest.raises(ValueError, match=msg):
            deepcache(net, 6, **{"interval": 2, **kw})
    with pytest.raises(ValueError, match="unknown block 'mid' in UNet2DModel; its top-level"):
        feature_inheritance(net, 6, ["mid"])
    with pytest.raises(ValueError, match="unknown when='middle'"):
        feature_inheritance(net, 6, when="middle")
    with pytest.raises(TypeError, match="deepcache needs a U-Net"):
        deepcache(torch.nn.Linear(2, 2), 4)
    with BlockCache(net, ["mid_block"], [True, False]), torch.no_grad():
        net(torch.randn(2, 1, 8, 8), 10)
        with pytest.raises(ValueError, match=r"holds features for inputs of shape \(2, 1, 8, 8\)"):
            net(torch.randn(3, 1, 8, 8), 10)
    with pytest.raises(ValueError, match="degree must be <= steps"):
        parastep(unet_denoiser(net), torch.randn(1, 1, 8, 8), 3, degree=4)


# --- ParaStep --------------------------------------------------------------------------------

GAUSS = Gaussian([0.5, -1.0], torch.tensor([[1.0, 0.6], [0.6, 0.8]]))
PROC = VPCosine()


def _exact(noise, steps):
    g = reverie.grids.make_grid(PROC, steps, "uniform")
    return GAUSS.ode_map(noise * float(PROC.sigma(g[0])), float(g[0]), float(g[-1]), PROC)


def test_parastep_equals_its_sequential_definition_and_degree_one_is_ddim():
    den = GAUSS.denoiser(PROC)
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ddim = reverie.sample(den, noise, sampler="ddim", steps=12, grid="uniform")
    one = parastep(den, noise, 12, degree=1, grid="uniform")
    torch.testing.assert_close(one.x0, ddim, rtol=1e-12, atol=1e-12)
    assert (one.nfe, one.rounds) == (12, 12)
    for p in (2, 3, 5):
        seq = parastep(den, noise, 12, degree=p, grid="uniform", parallel="sequential")
        bat = parastep(den, noise, 12, degree=p, grid="uniform", parallel="batch")
        torch.testing.assert_close(bat.x0, seq.x0, rtol=1e-12, atol=1e-12)
        assert bat.nfe == 12 and bat.rounds == 1 + math.ceil(12 / p)  # depth: one call a round
        assert not torch.allclose(bat.x0, ddim, atol=1e-6)  # reuse really changes the path


def test_parastep_converges_to_the_exact_flow_map():
    den = GAUSS.denoiser(PROC)
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    errs = {}
    for steps in (10, 40):
        ref = _exact(noise, steps)
        errs[steps] = float((parastep(den, noise, steps, degree=2, grid="uniform").x0 - ref)
                            .norm(dim=1).mean())
        ddim = reverie.sample(den, noise, sampler="ddim", steps=steps, grid="uniform")
        assert errs[steps] < 3 * float((ddim - ref).norm(dim=1).mean())
    assert math.log2(errs[10] / errs[40]) / 2 > 0.8  # first order, as DDIM
    assert errs[40] < 0.06
    bad = parastep(den, noise * 1.15, 40, degree=2, grid="uniform").x0  # sibling: noise 15% off
    assert float((bad - _exact(noise, 40)).norm(dim=1).mean()) > 0.06


def test_bench_is_discovered_and_checks_its_parts():
    import argparse

    from reverie.bench import accelerate as bench
    from reverie.bench import available

    assert available()["accelerate"] is bench
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    with pytest.raises(ValueError, match="unknown --skip part"):
        bench.run(parser.parse_args(["--skip", "reuse,pictures"]))
    # every part skipped: the parts are measured by their own tests, not here
    every = "reuse,distill,prune,pnp,imm,flash"
    assert bench.run(parser.parse_args(["--skip", every]))["steps"] == 20
