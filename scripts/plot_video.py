"""Draw docs/video.png: SparseCtrl in miniature (docs/video.md). Each panel is a clip, frames
top to bottom, pixels left to right: the keyframes (frames 0 and 5), the exact conditional mean,
and two clips each from the exact conditional law, the trained encoder and the frozen model
alone. Run: PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/plot_video.py"""

import torch

from reverie.plot import _figure, save_figure
from reverie.process import EDM
from reverie.samplers import sample
from reverie.video import MovingVideo, controls, sparsectrl_denoiser, train_sparse_encoder

torch.manual_seed(0)
video, process = MovingVideo(), EDM(sigma_data=1.0)
enc, _ = train_sparse_encoder(video, process, steps=1500)
g = torch.Generator().manual_seed(1)
mask = torch.zeros(video.frames, dtype=torch.bool)
mask[[0, 5]] = True
kf = video.sample(1, g)[0][mask]
law = video.conditional(mask, kf, 0.05)
den = sparsectrl_denoiser(video, enc, process)
noise = torch.randn(2, video.frames, video.pixels, generator=g, dtype=torch.float64)
none = {"cond": torch.zeros(2, video.frames, video.pixels, dtype=torch.float64),
        "mask": torch.zeros(2, video.frames, dtype=torch.bool)}
shown = torch.full((video.frames, video.pixels), float("nan"), dtype=torch.float64)
shown[mask] = kf
panels = [("keyframes", shown), ("exact mean", law.means[0].reshape(video.frames, -1))]
panels += [(f"exact {i + 1}", x.reshape(video.frames, -1)) for i, x in enumerate(law.sample(2, g))]
ctrl = sample(den, noise, "heun", 10, cond=controls(video, mask, kf, 2))
panels += [(f"SparseCtrl {i + 1}", x) for i, x in enumerate(ctrl)]
free = sample(den, noise, "heun", 10, cond=none)
panels += [(f"no control {i + 1}", x) for i, x in enumerate(free)]
fig = _figure(1.0 * len(panels), 1.8)
for k, (title, x) in enumerate(panels):
    ax = fig.add_subplot(1, len(panels), k + 1)
    ax.imshow(x.numpy(), cmap="RdBu_r", vmin=-2.5, vmax=2.5, interpolation="nearest")
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([0, 5] if k == 0 else [])
save_figure(fig, "docs/video.png")
