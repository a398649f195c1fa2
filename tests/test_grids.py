"""Time grids: shape, ends, spacing, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from tests.conftest import all_processes

import reverie
from reverie.grids import GRIDS, check_grid, make_grid

PROCS = all_processes()


@pytest.mark.parametrize("proc", PROCS, ids=repr)
@pytest.mark.parametrize("name", GRIDS)
@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_grid_shape_and_ends(proc, name, steps):
    if name in ("logsnr", "karras") and not math.isfinite(float(proc.log_snr(proc.t_max))):
        with pytest.raises(ValueError, match="finite log-SNR"):  # a flow at t = 1
            make_grid(proc, steps, name)
        return
    g = make_grid(proc, steps, name)
    assert g.dtype == torch.float64 and g.shape == (steps + 1,)
    if name == "leading":  # diffusers' leading spacing starts one stride below t_max
        stride = float(g[-3] - g[-2]) if steps > 1 else 0.0
        assert float(g[0]) == pytest.approx(proc.t_min + (steps - 1) * stride)
        assert float(g[0]) <= proc.t_max and (steps == 1 or g[0] + stride > proc.t_max - steps)
    else:
        assert float(g[0]) == pytest.approx(proc.t_max)
    assert float(g[-1]) == proc.t_clean
    assert bool((g[1:] < g[:-1]).all())
    if name not in ("trailing", "angle") and steps > 1:  # those two stop evaluating above t_min
        assert float(g[-2]) == pytest.approx(proc.t_min, rel=1e-9)


def test_logsnr_grid_is_uniform_in_log_snr():
    proc = reverie.VPLinear()
    g = make_grid(proc, 10, "logsnr")
    lam = proc.log_snr(g[:-1])
    torch.testing.assert_close(
        lam.diff(), torch.full((9,), float(lam.diff().mean()), dtype=torch.float64)
    )


def test_karras_grid_matches_edm_formula():
    proc = reverie.EDM()
    n, rho = 18, 7.0
    i = torch.arange(n, dtype=torch.float64)
    ref = (80 ** (1 / rho) + i / (n - 1) * (0.002 ** (1 / rho) - 80 ** (1 / rho))) ** rho
    torch.testing.assert_close(make_grid(proc, n, "karras")[:-1], ref)


def test_trailing_grid_on_discrete_vp_matches_diffusers():
    from diffusers import DDIMScheduler

    sch = DDIMScheduler(timestep_spacing="trailing")
    sch.set_timesteps(10)
    g = make_grid(reverie.VP.linear(), 10, "trailing")
    torch.testing.assert_close(g[:-1], sch.timesteps.to(torch.float64))


@pytest.mark.parametrize("steps", [5, 10, 30])
def test_leading_grid_on_discrete_vp_matches_diffusers(steps):
    from diffusers import DDIMScheduler

    sch = DDIMScheduler(clip_sample=False)  # timestep_spacing="leading" is its default
    sch.set_timesteps(steps)
    g = make_grid(reverie.VP.linear(), steps, "leading")
    torch.testing.assert_close(g[:-1], sch.timesteps.to(torch.float64))


def test_default_grids_on_discrete_vp_follow_diffusers():
    """DDIM-like first-order samplers walk diffusers' ``leading`` grid by default, multistep
    solvers ``trailing``; one step always starts at t_max, and a leading grid that cannot fit
    falls back to trailing."""
    from reverie.samplers import SAMPLERS, resolve_grid

    proc = reverie.VP.linear()
    assert resolve_grid(SAMPLERS["ddim"], proc, 5, None).tolist() == [800, 600, 400, 200, 0, -1]
    assert resolve_grid(SAMPLERS["dpmpp_2m"], proc, 5, None).tolist() == [
        999, 799, 599, 399, 199, -1]
    assert resolve_grid(SAMPLERS["dpmpp_2s"], proc, 3, None).tolist() == [999, 599, 199, -1]
    for name in SAMPLERS:
        assert float(resolve_grid(SAMPLERS[name], proc, 1, None)[0]) == proc.t_max
    assert float(resolve_grid(SAMPLERS["ddim"], proc, 1500, None)[0]) == proc.t_max
    # on a flow (log-SNR -inf at t = 1) exponential integrators start a thousandth below t = 1,
    # as diffusers' flow sigmas do; Euler starts at t = 1, Heun walks FlowMatchHeun's grid
    flow = reverie.RectifiedFlow()
    assert resolve_grid(SAMPLERS["dpmpp_2m"], flow, 5, None).tolist() == pytest.approx(
        [0.999, 0.7992, 0.5994, 0.3996, 0.1998, 0.0])
    assert resolve_grid(SAMPLERS["euler"], flow, 5, None).tolist() == pytest.approx(
        [1.0, 0.8, 0.6, 0.4, 0.2, 0.0])
    torch.testing.assert_close(
        resolve_grid(SAMPLERS["heun"], flow, 3, None), make_grid(flow, 3, "uniform"))
    # elsewhere the paper spacings stay: EDM's Karras grid for Euler, log-SNR for DPM-Solver++
    edm = reverie.EDM()
    torch.testing.assert_close(
        resolve_grid(SAMPLERS["euler"], edm, 7, None), make_grid(edm, 7, "karras"))
    torch.testing.assert_close(
        resolve_grid(SAMPLERS["dpmpp_2m"], edm, 7, None), make_grid(edm, 7, "logsnr"))


def test_flow_shift():
    proc = reverie.RectifiedFlow(shift=3.0)
    g = make_grid(proc, 4, "trailing")
    t = torch.tensor([1.0, 0.75, 0.5, 0.25], dtype=torch.float64)
    torch.testing.assert_close(g[:-1], 3 * t / (1 + 2 * t))


def test_bad_grids():
    proc = reverie.EDM()
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        make_grid(proc, 0)
    with pytest.raises(
        ValueError, match="unknown grid 'linear'.*uniform, trailing, logsnr, karras"
    ):
        make_grid(proc, 5, "linear")
    with pytest.raises(ValueError, match="must end at the clean end"):
        check_grid(torch.tensor([80.0, 1.0, 0.5]), proc)
    with pytest.raises(ValueError, match="strictly decreasing"):
        check_grid(torch.tensor([1.0, 2.0, 0.0]), proc)
    with pytest.raises(ValueError, match="start at or below t_max"):
        check_grid(torch.tensor([100.0, 1.0, 0.0]), proc)
    with pytest.raises(ValueError, match="NaN or inf"):
        check_grid(torch.tensor([float("nan"), 0.0]), proc)
    with pytest.raises(ValueError, match="finite log-SNR"):
        make_grid(reverie.RectifiedFlow(), 5, "karras")
    with pytest.raises(ValueError, match="angle grid needs c > 0 and p > 0, got c=0"):
        make_grid(proc, 5, "angle", c=0.0)


# ---------------------------------------------------------------------------------------------
# The angle grid against the closed form of DDIM on Gaussian data (AYS Thm. 3.1)
# ---------------------------------------------------------------------------------------------


def _ddim_vs_exact(proc, c_data: float, steps: int, **grid_opts) -> tuple[float, float]:
    """DDIM on ``N(0, c_data^2 I)`` from 4 noises on ``make_grid(..., "angle", **grid_opts)``:
    the mean and spread of (DDIM output / exact ODE output) over the entries."""
    from reverie.reference import Gaussian

    gauss = Gaussian([0.0, 0.0], [[c_data**2, 0.0], [0.0, c_data**2]])
    grid = make_grid(proc, steps, "angle", **grid_opts)
    x_t = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_t = x_t * float(proc.sigma(grid[0]))
    out = reverie.samplers.run("ddim", gauss.denoiser(proc), x_t, grid).x0
    exact = gauss.ode_map(x_t, float(grid[0]), proc.t_clean, proc)
    ratio = out / exact  # DDIM shrinks by a scalar on isotropic Gaussian data
    return float(ratio.mean()), float(ratio.std())


@pytest.mark.parametrize("proc", [reverie.EDM(), reverie.VP.linear()], ids=repr)
@pytest.mark.parametrize("steps", [3, 5, 10])
def test_angle_grid_is_ddims_closed_form_optimum_on_a_gaussian(proc, steps):
    """On ``N(0, c^2 I)`` one DDIM step from ``sigma = c tan th`` to ``c tan th'`` multiplies
    ``x / alpha`` by ``cos th cos(th - th') / cos th'``, so the output is the exact ODE image
    times ``prod cos(d th_i)``, largest (the smallest error of any grid of N steps) at equal
    angle steps (Sabour et al. 2024, Thm. 3.1): the angle grid with the data's ``c`` and
    ``p = 1`` has them (from ``th_max`` to ``th_min`` ~ 0, then one more onto the clean end).
    The grid built with ``c`` 15% off, or warped (``p = 1.75``), has a smaller ratio."""
    c = 0.7
    ratio, spread = _ddim_vs_exact(proc, c, steps, c=c, p=1.0)
    th = [math.atan(float(proc.sigma_ve(torch.tensor(v, dtype=torch.float64))) / c)
          for v in (proc.t_max, proc.t_min)]
    d = (th[0] - th[1]) / steps  # N - 1 equal angle steps, then th_min + d onto the clean end
    closed = math.cos(d) ** (steps - 1) * math.cos(th[1] + d)
    assert spread < 1e-9 and ratio == pytest.approx(closed, rel=1e-8, abs=0)
    for wrong in ({"c": 1.15 * c, "p": 1.0}, {"c": 0.85 * c, "p": 1.0}, {"c": c, "p": 1.75}):
        off, _ = _ddim_vs_exact(proc, c, steps, **wrong)
        assert off < closed - 5e-4, f"{wrong}: ratio {off:.6f} vs the optimum {closed:.6f}"


def _order_on_angle_grid(proc, name: str) -> float:
    """Observed global order of ``name`` on angle grids of 16, 32, 64 steps: the state on the
    last point before the clean end against the exact ODE solution of a correlated Gaussian."""
    from reverie.reference import Gaussian

    gauss = Gaussian([0.5, -1.0], [[1.0, 0.6], [0.6, 0.8]])
    noise = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = []
    for steps in (16, 32, 64):
        grid = make_grid(proc, steps, "angle")
        x_t = noise * float(proc.sigma(grid[0]))
        states = []
        reverie.samplers.run(name, gauss.denoiser(proc), x_t, grid,
                             callback=lambda s, sch, out=states: out.append(s))
        exact = gauss.ode_map(x_t, float(grid[0]), float(grid[-2]), proc)
        errors.append(float((states[-2].x - exact).norm(dim=1).max()))
    return math.log2(errors[-2] / errors[-1])


@pytest.mark.parametrize("proc", [reverie.EDM(), reverie.VP.linear()], ids=repr)
def test_samplers_keep_their_order_on_the_angle_grid(proc):
    """The pairings benchmarked at 5 NFE (unipc, chosen on the tuning mixtures, and ipndm)
    converge on the default angle grid at their registered order (measured 2.9-3.1 and 2.0-2.1);
    the same check rejects ddim (first order, measured 0.98) held to second order."""
    from reverie.samplers import SAMPLERS

    for name in ("unipc", "ipndm"):
        assert _order_on_angle_grid(proc, name) > SAMPLERS[name].order - 0.3, name
    assert not _order_on_angle_grid(proc, "ddim") > 2 - 0.3
