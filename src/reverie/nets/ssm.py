"""A state-space denoiser backbone: DiS (Fei et al. 2024, "Scalable Diffusion Models with State
Space Backbone") in miniature, on Mamba blocks (Gu & Dao 2023) with the selective scan written
in plain torch (no CUDA kernel).

DiS treats the noise level, the class and the image patches all as tokens of one sequence,
runs a stack of Mamba blocks over it (here alternating the scan direction, so every patch sees
every other one after two blocks) with U-ViT-style long skip connections between shallow and
deep blocks, and maps the patch tokens back to pixels.

The selective scan (Mamba, Alg. 2) for an input ``u [B, L, D]`` with input-dependent step
``delta [B, L, D]`` and projections ``B, C [B, L, N]``, and ``A [D, N]`` (negative):

    dA_t = exp(delta_t A),   dB_t = delta_t B_t          # zero-order-hold discretisation
    h_t = dA_t * h_{t-1} + dB_t u_t                      # h [B, D, N], h_0 = 0
    y_t = C_t . h_t + D_skip u_t

:func:`selective_scan_matrix` is the same map written as one lower-triangular matrix per
channel (``y = M u``, ``M_ts = C_t . (prod_{s<r<=t} dA_r) dB_s``; Mamba-2's "quadratic"
form) and :func:`selective_scan_parallel` as a log-depth associative scan (what the blocks run:
a sequential loop is slow to differentiate on a CPU); the tests check that the three agree.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reverie.nets.mlp import SinusoidalEmbedding

__all__ = ["selective_scan", "selective_scan_matrix", "selective_scan_parallel", "MambaBlock",
           "DiS", "patchify", "unpatchify"]


def _check_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    b, length, d = u.shape
    n = A.shape[-1]
    want = {"delta": (b, length, d), "A": (d, n), "B": (b, length, n), "C": (b, length, n)}
    for name, v in (("delta", delta), ("A", A), ("B", B), ("C", C)):
        if tuple(v.shape) != want[name]:
            raise ValueError(f"selective_scan: {name} must be {list(want[name])} for u "
                             f"{list(u.shape)} and state size {n}, got {list(v.shape)}")


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   D: Tensor | None = None) -> Tensor:
    """Mamba's selective scan (module docstring), sequentially over the ``L`` positions:
    ``[B, L, D]``."""
    _check_scan(u, delta, A, B, C)
    dA = torch.exp(delta[..., None] * A)  # [B, L, D, N] discretised decay
    dBu = delta[..., None] * B[:, :, None] * u[..., None]  # [B, L, D, N] discretised input
    h = u.new_zeros(u.shape[0], u.shape[2], A.shape[-1])
    ys = []
    for t in range(u.shape[1]):
        h = dA[:, t] * h + dBu[:, t]  # state update
        ys.append((h * C[:, t, None]).sum(-1))  # readout C_t . h_t
    y = torch.stack(ys, 1)
    return y if D is None else y + u * D


def selective_scan_parallel(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                            D: Tensor | None = None) -> Tensor:
    """The same scan in ``ceil(log2 L)`` rounds (Hillis-Steele on the associative pairs
    ``(dA_t, dB_t u_t)``, ``(a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2)``): what the blocks use,
    cheap to differentiate on a CPU."""
    _check_scan(u, delta, A, B, C)
    a = torch.exp(delta[..., None] * A)  # [B, L, D, N]
    h = delta[..., None] * B[:, :, None] * u[..., None]
    k = 1
    while k < u.shape[1]:  # after the round, position t holds the product of (t-2k, t]
        h = h + a * F.pad(h, (0, 0, 0, 0, k, 0))[:, : u.shape[1]]
        a = a * F.pad(a, (0, 0, 0, 0, k, 0), value=1.0)[:, : u.shape[1]]
        k *= 2
    y = (h * C[:, :, None]).sum(-1)
    return y if D is None else y + u * D


def selective_scan_matrix(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                          D: Tensor | None = None) -> Tensor:
    """The same map as one matrix per channel: ``M_ts = sum_n C_tn exp(A_n sum_{s<r<=t}
    delta_r) delta_s B_sn`` for ``s <= t`` (zero above the diagonal); ``y = M u``."""
    _check_scan(u, delta, A, B, C)
    cum = delta.cumsum(1)  # [B, L, D]
    seg = cum[:, :, None] - cum[:, None, :]  # [B, t, s, D]: sum over s < r <= t
    causal = torch.ones(u.shape[1], u.shape[1], dtype=torch.bool).tril()
    decay = torch.exp(seg[..., None] * A).masked_fill(~causal[None, :, :, None, None], 0.0)
    cb = C[:, :, None, None, :] * B[:, None, :, None, :]  # [B, t, s, 1, N]
    m = (decay * cb).sum(-1) * delta[:, None]  # [B, t, s, D]
    y = (m * u[:, None]).sum(2)
    return y if D is None else y + u * D


def patchify(x: Tensor, shape: tuple[int, ...], patch: int) -> Tensor:
    """Tokens ``[B, N, per]``: non-overlapping ``patch x patch`` patches of images ``[B, C, H,
    W]`` (``shape = (C, H, W)``, row-major) or ``patch`` consecutive values of ``[B, L]``."""
    b, p = x.shape[0], patch
    if len(shape) == 1:
        return x.reshape(b, -1, p)
    c, h, w = shape
    return x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(
        b, (h // p) * (w // p), -1)


def unpatchify(tok: Tensor, shape: tuple[int, ...], patch: int) -> Tensor:
    """The inverse of :func:`patchify`."""
    b, p = tok.shape[0], patch
    if len(shape) == 1:
        return tok.reshape(b, *shape)
    c, h, w = shape
    return tok.reshape(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


class MambaBlock(nn.Module):
    """A pre-norm Mamba block (Gu & Dao 2023, Fig. 3) with a residual connection:
    ``x + out(scan(silu(conv(in_x(LN x)))) * silu(in_z(LN x)))``, the scan's ``delta``,
    ``B``, ``C`` projected from its input (the "selection"); ``reverse`` scans right to left."""

    def __init__(self, dim: int, state: int = 8, expand: int = 2, conv: int = 3,
                 reverse: bool = False):
        super().__init__()
        inner, self.reverse, self.state = expand * dim, reverse, state
        self.rank = max(1, math.ceil(dim / 16))
        self.norm = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, 2 * inner)
        self.conv = nn.Conv1d(inner, inner, conv, padding=conv - 1, groups=inner)
        self.x_proj = nn.Linear(inner, self.rank + 2 * state, bias=False)
        self.dt_proj = nn.Linear(self.rank, inner)
        # S4D-real initialisation A_n = -(n + 1); delta's bias: softplus^-1 of [1e-3, 1e-1]
        self.A_log = nn.Parameter(torch.log(torch.arange(1, state + 1.0)).repeat(inner, 1))
        dt = torch.exp(torch.rand(inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x.flip(1) if self.reverse else x)
        u, z = self.in_proj(h).chunk(2, -1)
        u = F.silu(self.conv(u.transpose(1, 2))[..., : u.shape[1]].transpose(1, 2))  # causal
        dt, B, C = self.x_proj(u).split([self.rank, self.state, self.state], -1)
        delta = F.softplus(self.dt_proj(dt))  # input-dependent step
        y = selective_scan_parallel(u, delta, -torch.exp(self.A_log), B, C, self.D)
        y = self.out_proj(y * F.silu(z))  # gated output
        return x + (y.flip(1) if self.reverse else y)


class DiS(nn.Module):
    """DiS: ``net(x, time [B], class_labels=None)`` on images ``[B, C, H, W]`` (``shape`` =
    ``(C, H, W)``, ``patch x patch`` patches) or sequences ``[B, L]`` (``shape = (L,)``,
    ``patch`` consecutive values). Patches become tokens, a time token (and a class token when
    ``num_classes``) are prepended, ``depth`` Mamba blocks (alternating directions; the second
    half receives the first half's outputs by long skips, concatenated and projected) run over
    the sequence, and a linear head maps the patch tokens back."""

    def __init__(self, shape: tuple[int, ...] = (1, 8, 8), patch: int = 2, dim: int = 64,
                 depth: int = 4, state: int = 8, expand: int = 2, num_classes: int = 0):
        super().__init__()
        self.shape, self.patch = tuple(int(v) for v in shape), int(patch)
        if len(self.shape) not in (1, 3) or any(v % patch for v in self.shape[-2:] if
                                                 len(self.shape) == 3) or (
                len(self.shape) == 1 and self.shape[0] % patch):
            raise ValueError(f"shape must be (L,) or (C, H, W) with sizes multiples of patch "
                             f"{patch}, got {shape}")
        if depth % 2:
            raise ValueError(f"depth must be even (long skips pair the halves), got {depth}")
        per = patch if len(self.shape) == 1 else self.shape[0] * patch * patch
        self.tokens = math.prod(self.shape) // per
        self.embed = nn.Linear(per, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(1, self.tokens + 2, dim))
        self.time = nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, dim), nn.SiLU(),
                                  nn.Linear(dim, dim))
        self.label = nn.Embedding(num_classes, dim) if num_classes else None
        self.blocks = nn.ModuleList(MambaBlock(dim, state, expand, reverse=bool(i % 2))
                                    for i in range(depth))
        self.skips = nn.ModuleList(nn.Linear(2 * dim, dim) for _ in range(depth // 2))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, per)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def patchify(self, x: Tensor) -> Tensor:
        return patchify(x, self.shape, self.patch)

    def unpatchify(self, tok: Tensor) -> Tensor:
        return unpatchify(tok, self.shape, self.patch)

    def forward(self, x: Tensor, time: Tensor, class_labels: Tensor | None = None) -> Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"DiS expects inputs [B, {', '.join(map(str, self.shape))}], got "
                             f"{list(x.shape)}")
        b = x.shape[0]
        t_tok = self.time(time.reshape(-1).expand(b))[:, None]
        c_tok = (self.label(class_labels)[:, None] if self.label is not None
                 and class_labels is not None else torch.zeros_like(t_tok))
        h = torch.cat([t_tok, c_tok, self.embed(self.patchify(x))], 1) + self.pos
        half, saved = len(self.blocks) // 2, []
        for i, block in enumerate(self.blocks):
            if i >= half:  # long skip from the mirrored shallow block
                h = self.skips[i - half](torch.cat([h, saved.pop()], -1))
            h = block(h)
            if i < half:
                saved.append(h)
        return self.unpatchify(self.head(self.norm(h[:, 2:])))
