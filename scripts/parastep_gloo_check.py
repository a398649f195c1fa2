"""ParaStep over a 2-rank gloo group equals its sequential definition (one process), bitwise.

    OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc-per-node 2 \
        scripts/parastep_gloo_check.py

Each rank prints ``equal: True`` and the accounting (NFE 10, sequential depth 6). Not a pytest
test: starting two ranks takes ~40 s on the shared 2-core machine.
"""

import torch
import torch.distributed as dist

from reverie import distributed as rd
from reverie.accelerate import parastep
from reverie.process import VPCosine
from reverie.reference.gaussian import Gaussian

torch.set_num_threads(1)
rd.init_from_env()
g = Gaussian([0.5, -1.0], torch.tensor([[1.0, 0.6], [0.6, 0.8]]))
den = g.denoiser(VPCosine())
noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
a = parastep(den, noise, 10, degree=2, grid="uniform", parallel="distributed")
b = parastep(den, noise, 10, degree=2, grid="uniform", parallel="sequential")
print(rd.rank(), "equal:", torch.equal(a.x0, b.x0), float((a.x0-b.x0).abs().max()), a.nfe, a.rounds)
dist.destroy_process_group()
