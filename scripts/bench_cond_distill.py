"""CoDi in miniature (reverie.accelerate.cond_distill): a 4-component 2-D Gaussian mixture prior
(exact unconditional teacher), condition c = x[0] + N(0, 0.3^2). The joint law of (sample, c)
is compared with the exact joint law of (x0, c) by sliced W2 at 1/2/4 network calls, against
the teacher's DPS / PiGDM posterior samplers at equal calls and two must-fail variants.
Usage: PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/bench_cond_distill.py [iters]"""

import sys
import time

import torch

from reverie.accelerate.cond_distill import conditional_distill
from reverie.inverse import MatrixOperator, solve
from reverie.metrics import sliced_wasserstein
from reverie.process import VPCosine
from reverie.reference.gaussian import GaussianMixture

torch.set_num_threads(1)
SY = 0.3
prior = GaussianMixture([[-1.5, -1.5], [-1.5, 1.5], [1.5, -1.5], [1.5, 1.5]], 0.09)
proc = VPCosine()
teacher = prior.denoiser(proc)


def pairs(n, seed, sy=SY):
    g = torch.Generator().manual_seed(seed)
    x = prior.sample(n, g)
    return x, x[:, :1] + sy * torch.randn(n, 1, generator=g, dtype=torch.float64)


def sw(x, c, ref):
    return sliced_wasserstein(torch.cat([x, c], 1), ref, 128, torch.Generator().manual_seed(3))


iters = int(sys.argv[1]) if len(sys.argv) > 1 else 600
x0, c = pairs(20000, 0)
xe, ce = pairs(4000, 1)
ref = torch.cat(pairs(4000, 2), 1)  # an independent exact joint sample
noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
floor = sliced_wasserstein(torch.cat([xe, ce], 1), ref, 128, torch.Generator().manual_seed(3))
print(f"exact-vs-exact floor {floor:.3f}")
t0 = time.perf_counter()
st = conditional_distill(teacher, x0, c, iters=iters)
print(f"trained in {time.perf_counter() - t0:.1f}s, loss {st.history[-1]['loss']:.4f}")
off = conditional_distill(teacher, *pairs(20000, 0, 1.15 * SY), iters=iters)
blind = conditional_distill(teacher, x0, torch.zeros_like(c), iters=iters)
A = MatrixOperator(torch.tensor([[1.0, 0.0]], dtype=torch.float64))
rows = []
for k in (1, 2, 4):
    r = {"steps": k, "codi": sw(st.sample(noise, ce, k, torch.Generator().manual_seed(5)), ce, ref),
         "codi_sy+15%": sw(off.sample(noise, ce, k, torch.Generator().manual_seed(5)), ce, ref),
         "codi_blind": sw(blind.sample(noise, torch.zeros_like(ce), k,
                                       torch.Generator().manual_seed(5)), ce, ref)}
    for m in ("dps", "pigdm"):
        xs = solve(teacher, A, ce, SY, m, steps=k, generator=[torch.Generator().manual_seed(i)
                                                              for i in range(len(ce))])
        r[m] = sw(xs, ce, ref)
    rows.append(r)
    print("  ".join(f"{a}={b:.3f}" if isinstance(b, float) else f"{a}={b}" for a, b in r.items()))
