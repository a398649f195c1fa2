"""Audio in miniature: Stable Audio's timing conditioning and DiffRhythm's full-length latent
generation on synthetic note sequences, judged by the pitch and timing of the rendered audio.

* Stable Audio (Evans et al. 2024, "Fast Timing-Conditioned Latent Audio Diffusion", sec. 3.2):
  the model works in a *fixed window* of latent frames and is conditioned on
  ``seconds_start`` (where the chunk starts in its file) and ``seconds_total`` (the file's
  length) through learned Fourier-feature number embeddings (:class:`TimingEmbedding`, the
  ``NumberConditioner`` of stable-audio-tools). Asking for ``seconds_total`` shorter than the
  window gives audio of that length followed by silence, which :func:`trim` cuts.
* DiffRhythm (Ning et al. 2025, sec. 3): the whole song's latent is generated at once
  (non-autoregressively), conditioned on lyrics placed at their sentence start times in a
  frame-length sequence (:func:`align_lyrics`, the paper's sentence-level alignment).

The latents here are Grad-TTS's mel-like frames (:func:`reverie.gradtts.mel_template`; bin
``k`` stands for ``k * BIN_HZ`` Hz): a note of pitch bin ``p`` is ``mel_template(p)`` plus
:func:`reverie.gradtts.frame_residual` noise, silence is that noise alone. Given the notes and
the timing the law of a window is Gaussian, so :class:`TimedNotes` has an exact denoiser. The
"decoder" :func:`render` turns frames into a waveform (a sum of sinusoids, numpy), and
:func:`analyse` measures per-frame pitch and loudness of any waveform; :func:`synth_notes`
synthesises note sequences with numpy for the tests. Not implemented: the VAE / autoencoder,
text or style conditioning, the DiT / U-Net backbones of the papers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from reverie._tensor import bcast, time_tensor
from reverie.denoisers import Denoiser
from reverie.gradtts import frame_residual, mel_template
from reverie.process import GaussianProcess

__all__ = ["SR", "FRAME_RATE", "BIN_HZ", "BINS", "TimingEmbedding", "TimedNotes", "TimingNet",
           "active_seconds", "align_lyrics", "analyse", "note_means", "render", "sounding",
           "synth_notes", "timing_batch", "train_timing", "trim"]

SR = 4000  #: sample rate of the waveforms (Hz)
FRAME_RATE = 25  #: latent frames per second (hop of 160 samples)
BIN_HZ = 50.0  #: frequency of one latent bin (bin k is k * 50 Hz)
BINS = 20  #: latent bins per frame


def _check_rate(sr: int, expected: int = SR) -> None:
    if int(sr) != expected:
        raise ValueError(f"sample rate must be {expected} Hz (the frames' rate), got {sr}")


# ---------------------------------------------------------------------------------------------
# Stable Audio: timing embeddings
# ---------------------------------------------------------------------------------------------


class TimingEmbedding(nn.Module):
    """Stable Audio's number conditioner for ``seconds_start`` / ``seconds_total``: the value
    clamped to ``[min_s, max_s]`` and normalised to ``[0, 1]``, learned Fourier features
    ``[u, sin(2 pi u w), cos(2 pi u w)]`` (``w`` ``[dim / 2]`` learned), a linear layer to
    ``features``. One embedding per timing value; :meth:`forward` returns both, concatenated
    ``[B, 2 features]`` (the paper appends them to the global conditioning)."""

    def __init__(self, features: int = 32, dim: int = 16, min_s: float = 0.0,
                 max_s: float = 2.0):
        super().__init__()
        if dim % 2 or dim < 2:
            raise ValueError(f"dim must be a positive even number, got {dim}")
        if not max_s > min_s:
            raise ValueError(f"max_s must exceed min_s, got {min_s} and {max_s}")
        self.min_s, self.max_s = float(min_s), float(max_s)
        self.weights = nn.ParameterList([nn.Parameter(torch.randn(dim // 2)) for _ in range(2)])
        self.linear = nn.ModuleList([nn.Linear(dim + 1, features) for _ in range(2)])

    def embed(self, seconds: Tensor, which: int) -> Tensor:
        u = (seconds.clamp(self.min_s, self.max_s) - self.min_s) / (self.max_s - self.min_s)
        u = u[:, None]  # [B, 1] normalised seconds
        f = u * self.weights[which][None] * 2 * math.pi  # learned frequencies
        return self.linear[which](torch.cat([u, f.sin(), f.cos()], -1))

    def forward(self, seconds_start: Tensor, seconds_total: Tensor) -> Tensor:
        return torch.cat([self.embed(seconds_start, 0), self.embed(seconds_total, 1)], -1)


def active_seconds(seconds_start: float, seconds_total: float, window_s: float) -> float:
    """Seconds of sound in a window that starts ``seconds_start`` into a file of
    ``seconds_total`` (the rest of the window is silence)."""
    if seconds_start < 0 or seconds_total <= 0:
        raise ValueError(f"seconds_start must be >= 0 and seconds_total > 0, got "
                         f"{seconds_start} and {seconds_total}")
    return min(max(seconds_total - seconds_start, 0.0), window_s)


def trim(frames: Tensor, seconds: float, rate: int = FRAME_RATE) -> Tensor:
    """The first ``seconds`` of a generated window ``[..., T, bins]`` (Stable Audio cuts the
    silent tail after generation)."""
    return frames[..., : int(round(seconds * rate)), :]


# ---------------------------------------------------------------------------------------------
# DiffRhythm: sentence-level alignment
# ---------------------------------------------------------------------------------------------


def align_lyrics(sentences: Sequence[Sequence[int]], starts_s: Sequence[float], frames: int,
                 rate: int = FRAME_RATE, pad: int = 0) -> Tensor:
    """DiffRhythm's sentence-level alignment: a ``[frames]`` token sequence, ``pad`` everywhere
    except that each sentence's tokens are written from the frame of its start time on (a
    sentence that would overlap the next one or run past the end is an error)."""
    if len(sentences) != len(starts_s):
        raise ValueError(f"one start time per sentence: {len(sentences)} sentences, "
                         f"{len(starts_s)} starts")
    out = torch.full((frames,), pad, dtype=torch.long)
    end = 0
    for tokens, s in zip(sentences, starts_s):
        i = int(round(s * rate))
        if i < end or i + len(tokens) > frames:
            raise ValueError(f"sentence at {s} s (frame {i}, {len(tokens)} tokens) overlaps the "
                             f"previous one or runs past frame {frames}")
        if any(int(k) == pad for k in tokens):
            raise ValueError(f"token {pad} is the padding token")
        out[i: i + len(tokens)] = torch.as_tensor(tokens, dtype=torch.long)
        end = i + len(tokens)
    return out


# ---------------------------------------------------------------------------------------------
# The latent law of timed notes, its exact denoiser
# ---------------------------------------------------------------------------------------------


def note_means(pitches: Sequence[float], starts_s: Sequence[float], seconds: float,
               frames: int, rate: int = FRAME_RATE, bins: int = BINS) -> Tensor:
    """Mean frames ``[frames, bins]`` of notes starting at ``starts_s`` (each lasting until the
    next starts) that sound for ``seconds``; zero (silence) after."""
    if len(pitches) != len(starts_s) or not pitches:
        raise ValueError(f"pitches and starts must be non-empty and of the same length, got "
                         f"{len(pitches)} and {len(starts_s)}")
    if list(starts_s) != sorted(starts_s) or starts_s[0] < 0:
        raise ValueError(f"start times must be non-negative and increasing, got {list(starts_s)}")
    mu = torch.zeros(frames, bins, dtype=torch.float64)
    on = [int(round(s * rate)) for s in starts_s] + [min(int(round(seconds * rate)), frames)]
    for p, a, b in zip(pitches, on[:-1], on[1:]):
        mu[a:b] = mel_template(float(p), bins)
    return mu


class TimedNotes:
    """The law of a window of ``frames`` latent frames given its notes and timing: frame ``t``
    is ``mu_t + g_t R_t``, ``mu`` from :func:`note_means`, ``R_t`` iid
    :func:`~reverie.gradtts.frame_residual`, ``g_t = 1`` where a note sounds and ``floor``
    (a quiet noise floor) in silence (``mu_t = 0``). :meth:`denoiser` is the exact
    ``E[x0 | x_t]`` for windows ``[B, frames, bins]`` under a reverie ``process`` with
    ``cond`` ``mu``."""

    def __init__(self, frames: int = 32, bins: int = BINS, rate: int = FRAME_RATE,
                 floor: float = 0.1):
        self.frames, self.bins, self.rate = int(frames), int(bins), int(rate)
        self.residual, self.floor = frame_residual(bins), float(floor)

    def gain(self, mu: Tensor) -> Tensor:
        """``g_t`` ``[..., frames, 1]``: 1 on sounding frames, ``floor`` on silent ones."""
        silent = (mu == 0).all(-1, keepdim=True)
        return 1 - (1 - self.floor) * silent.to(mu.dtype)

    @property
    def window_s(self) -> float:
        return self.frames / self.rate

    def means(self, pitches: Sequence[float], starts_s: Sequence[float] = (0.0,),
              seconds_start: float = 0.0, seconds_total: float | None = None) -> Tensor:
        """``mu`` of a window: the notes (times from the file's start) seen from
        ``seconds_start``, sounding until ``seconds_total`` (default: the window's end)."""
        total = self.window_s + seconds_start if seconds_total is None else seconds_total
        active = active_seconds(seconds_start, total, self.window_s)
        shifted = [max(s - seconds_start, 0.0) for s in starts_s]
        return note_means(pitches, shifted, active, self.frames, self.rate, self.bins)

    def sample(self, mu: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One exact draw ``[B, frames, bins]`` of each window with mean frames ``mu``
        ``[B, frames, bins]``."""
        if mu.ndim != 3 or mu.shape[1:] != (self.frames, self.bins):
            raise ValueError(f"mu must be [B, {self.frames}, {self.bins}], got {list(mu.shape)}")
        r = self.residual.sample(mu.shape[0] * self.frames, generator).reshape(mu.shape)
        return mu + self.gain(mu) * r

    def denoiser(self, process: GaussianProcess) -> Denoiser:
        """Exact: ``x0 = mu + g R`` so ``E[x0 | x_t] = mu + g E[R | x_t - alpha mu]``, where
        ``x_t - alpha mu = (alpha g) R + sigma eps``: the residual's closed-form Gaussian
        denoiser at signal scale ``alpha g``, frame by frame (one time per batch)."""
        res = self.residual

        def fn(x: Tensor, t: Tensor, mu: Tensor) -> Tensor:
            if x.shape[-2:] != (self.frames, self.bins):
                raise ValueError(f"windows must be [B, {self.frames}, {self.bins}], got "
                                 f"{list(x.shape)}")
            mu = mu.to(x).expand_as(x)
            t = time_tensor(t, x)
            if bool((t != t.flatten()[0]).any()):
                raise ValueError("TimedNotes.denoiser needs one time for the whole batch")
            a, s = process.alpha(t).flatten()[0], process.sigma(t).flatten()[0]
            r = (x - a * mu).reshape(-1, self.bins)
            silent = (mu == 0).all(-1).reshape(-1)
            out = torch.empty_like(r)
            for rows, g in ((~silent, 1.0), (silent, self.floor)):  # sounding, silent frames
                out[rows] = g * res.denoise_at(r[rows], a * g, s).to(r)
            return mu + out.reshape(x.shape)

        return Denoiser(fn, process, "x0")


# ---------------------------------------------------------------------------------------------
# numpy synthesis, rendering and analysis
# ---------------------------------------------------------------------------------------------


def synth_notes(pitches_hz: Sequence[float], durations_s: Sequence[float], sr: int = SR,
                seconds: float | None = None, amplitude: float = 1.0) -> np.ndarray:
    """A waveform (numpy ``float64``) of consecutive tones (fundamental plus a second harmonic
    at half amplitude), padded with silence to ``seconds`` if given."""
    _check_rate(sr)
    if len(pitches_hz) != len(durations_s):
        raise ValueError(f"one duration per pitch: {len(pitches_hz)} pitches, "
                         f"{len(durations_s)} durations")
    parts = []
    for f, d in zip(pitches_hz, durations_s):
        n = np.arange(int(round(d * sr))) / sr
        parts.append(amplitude * (np.sin(2 * np.pi * f * n) + 0.5 * np.sin(4 * np.pi * f * n)))
    wave = np.concatenate(parts) if parts else np.zeros(0)
    if seconds is not None:
        wave = np.pad(wave, (0, max(int(round(seconds * sr)) - wave.size, 0)))
    return wave


def render(frames: Tensor, sr: int = SR, rate: int = FRAME_RATE) -> np.ndarray:
    """The toy decoder: frames ``[T, bins]`` to a waveform, bin ``k`` a sinusoid at
    ``k * BIN_HZ`` Hz with the frame's (non-negative) value as its amplitude, held per frame."""
    _check_rate(sr)
    f = frames.detach().to(torch.float64).clamp(min=0).cpu().numpy()
    hop = sr // rate
    n = np.arange(f.shape[0] * hop) / sr
    amp = np.repeat(f, hop, axis=0)  # [samples, bins]
    tones = np.sin(2 * np.pi * n[:, None] * BIN_HZ * np.arange(f.shape[1])[None])
    return (amp * tones).sum(-1)


def analyse(wave: np.ndarray, sr: int = SR, rate: int = FRAME_RATE) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """Per-frame pitch (Hz, the strongest FFT peak of the Hann-windowed frame) and RMS
    loudness of a waveform, ``([frames], [frames])``."""
    _check_rate(sr)
    hop = sr // rate
    w = np.asarray(wave, dtype=np.float64)
    frames = w[: w.size // hop * hop].reshape(-1, hop)
    spec = np.abs(np.fft.rfft(frames * np.hanning(hop), n=4 * hop, axis=-1))
    freqs = np.fft.rfftfreq(4 * hop, 1 / sr)
    return freqs[spec.argmax(-1)], np.sqrt((frames**2).mean(-1))


def sounding(loudness: np.ndarray, threshold: float = 0.3) -> float:
    """Seconds until the last frame louder than ``threshold`` (RMS)."""
    on = np.flatnonzero(loudness > threshold)
    return 0.0 if on.size == 0 else (on[-1] + 1) / FRAME_RATE


# ---------------------------------------------------------------------------------------------
# A tiny timing-conditioned denoiser
# ---------------------------------------------------------------------------------------------


class TimingNet(nn.Module):
    """A small x0-predicting network on windows ``[B, frames, bins]``: per-frame MLP over
    ``[x_t frame, frame position, log sigma, pitch embedding, timing embedding]``, plus a
    window-mean context; ``timing=False`` drops the :class:`TimingEmbedding` (the baseline)."""

    def __init__(self, frames: int = 32, bins: int = BINS, hidden: int = 128,
                 pitches: int = BINS, timing: bool = True, max_s: float = 2.0):
        super().__init__()
        self.frames, self.bins, self.timing = frames, bins, timing
        self.embed_timing = TimingEmbedding(16, max_s=max_s) if timing else None
        self.embed_pitch = nn.Embedding(pitches, 16)
        self.pos = nn.Parameter(0.1 * torch.randn(frames, 16))
        inp = bins + 16 + 1 + 16 + (32 if timing else 0)
        self.point = nn.Sequential(nn.Linear(inp, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                   nn.SiLU())
        self.out = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, bins))

    def forward(self, x: Tensor, t: Tensor, process: GaussianProcess, pitch: Tensor,
                seconds_start: Tensor, seconds_total: Tensor) -> Tensor:
        if x.shape[-2:] != (self.frames, self.bins):
            raise ValueError(f"windows must be [B, {self.frames}, {self.bins}], got "
                             f"{list(x.shape)}")
        b = x.shape[0]
        t = time_tensor(t, x)
        a, s = bcast(process.alpha(t), x).to(x), bcast(process.sigma(t), x).to(x)
        xin = x / (a**2 + s**2).sqrt()  # unit-scale input
        g = [self.embed_pitch(pitch.long())]
        if self.embed_timing is not None:
            g.append(self.embed_timing(seconds_start.to(x), seconds_total.to(x)))
        g = torch.cat(g, -1)[:, None].expand(b, self.frames, -1)
        ls = s.log().reshape(b, 1, 1).expand(b, self.frames, 1)
        h = self.point(torch.cat([xin, self.pos[None].expand(b, -1, -1), ls, g], -1))
        return self.out(torch.cat([h, h.mean(1, keepdim=True).expand_as(h)], -1))

    def denoiser(self, process: GaussianProcess) -> Denoiser:
        """A reverie denoiser; ``cond``: ``pitch``, ``seconds_start``, ``seconds_total`` [B]."""

        def fn(x: Tensor, t: Tensor, **cond: Any) -> Tensor:
            return self(x, t, process, **cond)

        return Denoiser(fn, process, "x0", dtype=next(self.parameters()).dtype)


def timing_batch(law: TimedNotes, n: int, pitches: Sequence[int], max_total: float,
                 generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Training windows of one note each: a pitch from ``pitches``, ``seconds_total`` uniform
    on ``[0.2, max_total]``, ``seconds_start`` 0 (the file's first window). Returns
    ``(x0 [n, frames, bins], cond)``."""
    k = torch.randint(len(pitches), (n,), generator=generator)
    total = 0.2 + (max_total - 0.2) * torch.rand(n, generator=generator, dtype=torch.float64)
    mu = torch.stack([law.means([pitches[int(i)]], [0.0], 0.0, float(s))
                      for i, s in zip(k, total)])
    x0 = law.sample(mu, generator)
    cond = {"pitch": torch.as_tensor(pitches)[k], "seconds_start": torch.zeros(n),
            "seconds_total": total.float()}
    return x0.float(), cond


def train_timing(net: TimingNet, law: TimedNotes, process: GaussianProcess,
                 pitches: Sequence[int], steps: int = 1500, batch: int = 64, lr: float = 2e-3,
                 generator: torch.Generator | None = None) -> list[float]:
    """Denoising regression ``|x0_hat(x_t, t, cond) - x0|^2`` at ``t ~ U[t_min, t_max]`` on
    :func:`timing_batch` windows (lengths up to the window). Returns the loss per step."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    lo, hi = float(process.t_min), float(process.t_max)
    losses = []
    for _ in range(steps):
        x0, cond = timing_batch(law, batch, pitches, law.window_s, generator)
        t = lo + (hi - lo) * torch.rand(batch, generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        xt = bcast(process.alpha(t), x0).float() * x0 + bcast(process.sigma(t), x0).float() * eps
        loss = ((net(xt, t, process, **cond) - x0) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses
