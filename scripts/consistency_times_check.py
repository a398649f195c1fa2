"""Multistep consistency sampling times (issue 20): the old rule (even spread including the clean
``t_1``) against ``floor(j n / k)`` on one consistency student of the bundled two-moons teacher,
the setup of tests/test_accelerate_distill.py with data / noise / training seeded by SEED.
Usage: python scripts/consistency_times_check.py SEED POINTS ITERS (sliced W2 to the teacher's
50-step law; the rule was chosen with seed 0 and reported with seed 1)."""

import sys

import torch

import reverie
from reverie.accelerate.distill import Student, consistency_distill
from reverie.data import two_moons
from reverie.metrics import sliced_wasserstein


def main(seed: int, points: int, iters: int) -> None:
    torch.set_num_threads(1)
    model = reverie.load("two-moons")
    data, _ = two_moons(4000, generator=torch.Generator().manual_seed(seed))
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(seed + 2))
    law = reverie.sample(model.denoiser, noise, sampler="dpmpp_2m", steps=50)
    student = consistency_distill(model.denoiser, data, points=points, iters=iters, batch=128,
                                  seed=seed)
    n = student.trained_steps
    for k in (1, 2, 3, 4):
        old_idx = torch.linspace(0, n - 1, k).round().long()
        old = Student(student.denoiser, "consistency", student.grid[old_idx])
        got = [float(sliced_wasserstein(s.sample(noise, k, torch.Generator().manual_seed(0)),
                                        law, 128, torch.Generator().manual_seed(seed + 3)))
               for s in (old, student)]
        print(f"{k} steps: old {old_idx.tolist()} {got[0]:.4f} -> new "
              f"{(torch.arange(k) * n // k).tolist()} {got[1]:.4f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
