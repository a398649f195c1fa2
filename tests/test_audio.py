"""reverie.audio: Stable Audio's timing conditioning and DiffRhythm's aligned full-length
generation on the exact law of timed note frames, judged on the rendered waveform (pitch and
timing), with wrong variants rejected; numpy synthesis and analysis; bad input."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

import reverie
from reverie.audio import (
    BIN_HZ,
    FRAME_RATE,
    SR,
    TimedNotes,
    TimingEmbedding,
    TimingNet,
    align_lyrics,
    analyse,
    render,
    sounding,
    synth_notes,
    trim,
)
from reverie.process import VPLinear

PROC = VPLinear()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_synthesis_and_analysis_recover_pitch_and_length():
    """numpy tones of 300 Hz then 200 Hz (0.4 s each) padded to 1.28 s: every frame's FFT-peak
    pitch is its note's, and the sound stops at 0.8 s; a wrong sample rate is refused."""
    w = synth_notes([300, 200], [0.4, 0.4], seconds=1.28)
    f0, loud = analyse(w)
    assert w.shape == (int(1.28 * SR),) and f0.shape == (32,)
    np.testing.assert_array_equal(f0[:10], 300.0)
    np.testing.assert_array_equal(f0[10:20], 200.0)
    assert sounding(loud) == 0.8 and (loud[20:] == 0).all()
    with pytest.raises(ValueError, match="sample rate must be 4000"):
        analyse(w, sr=8000)
    with pytest.raises(ValueError, match="sample rate must be 4000"):
        synth_notes([300], [0.1], sr=16000)
    with pytest.raises(ValueError, match="one duration per pitch"):
        synth_notes([300, 200], [0.1])


def test_timing_embedding():
    """Fourier features of the clamped, normalised seconds: [B, 2 features]; seconds beyond
    max_s embed as max_s; start and total have their own embeddings."""
    emb = TimingEmbedding(features=8, max_s=2.0)
    z = torch.zeros(3)
    out = emb(z, torch.tensor([0.5, 2.0, 5.0]))
    assert out.shape == (3, 16)
    torch.testing.assert_close(out[1], out[2])  # clamped at max_s
    assert not torch.allclose(out[0], out[1])
    assert not torch.allclose(emb(torch.ones(1), torch.ones(1))[:, :8], emb(z[:1], torch.ones(
        1))[:, :8])
    with pytest.raises(ValueError, match="even"):
        TimingEmbedding(dim=5)
    with pytest.raises(ValueError, match="max_s must exceed"):
        TimingEmbedding(min_s=2.0, max_s=1.0)


def _judge(x, totals, pitch):
    """Per window: |sounding length - requested| (s) and the fraction of its requested frames
    at the requested pitch, on the rendered waveform."""
    err, hit = [], []
    for xi, s, p in zip(x, totals, pitch):
        f0, loud = analyse(render(xi))
        err.append(abs(sounding(loud) - s))
        hit.append(float((abs(f0[: int(round(s * FRAME_RATE))] - p * BIN_HZ) < BIN_HZ / 2).mean()))
    return max(err), min(hit)


def test_timing_conditioned_window_from_the_exact_law():
    """Stable Audio's variable length in a fixed window: windows sampled (DPM-Solver++ 2M, 20
    steps) from the exact timed law for 0.4-1.2 s of a tone sound exactly that long (to the
    frame) at the right pitch, the tail silent; the per-frame moments match the law. A
    seconds_total 15% off or a wrong noise floor is rejected."""
    law = TimedNotes(32)
    totals, pitch = [0.4, 0.6, 0.8, 1.0, 1.2], [4, 6, 8, 5, 7]
    mu = torch.stack([law.means([p], [0.0], 0.0, s) for p, s in zip(pitch, totals)])
    n = 40
    mus = mu.repeat(n, 1, 1)
    noise = torch.randn(len(mus), 32, 20, generator=gen(0), dtype=torch.float64)

    def draw(den, m):
        return reverie.sample(den, noise, "dpmpp_2m", 20, cond={"mu": m})

    x = draw(law.denoiser(PROC), mus)
    err, hit = _judge(x[:5], totals, pitch)
    assert err == 0 and hit >= 0.9, (err, hit)  # measured 0 and 0.96 (noise moves some peaks)
    # per-bin second moments of x - mu: C on sounding frames, floor^2 C on silent ones
    r = (x - mus).reshape(n, 5, 32, 20)
    c = law.residual.covariances[0]
    sil = mu.eq(0).all(-1)  # [5, 32]
    v_on = (r.pow(2).mean(0) * ~sil[..., None]).sum((0, 1)) / (~sil).sum()
    v_off = (r.pow(2).mean(0) * sil[..., None]).sum((0, 1)) / sil.sum()
    assert float((v_on / c.diagonal() - 1).abs().max()) < 0.2, v_on / c.diagonal()
    assert float((v_off / (0.01 * c.diagonal()) - 1).abs().max()) < 0.25
    # wrong variants: 15% longer seconds_total in the law; a louder noise floor
    off = torch.stack([law.means([p], [0.0], 0.0, 1.15 * s) for p, s in zip(pitch, totals)])
    assert _judge(draw(law.denoiser(PROC), off.repeat(n, 1, 1))[:5], totals, pitch)[0] >= 0.08
    loud = TimedNotes(32, floor=0.5)
    assert _judge(draw(loud.denoiser(PROC), mus)[:5], totals, pitch)[0] > 0.04
    torch.testing.assert_close(trim(x, 0.4).shape[-2], 10)


def test_diffrhythm_alignment_and_full_length_generation():
    """DiffRhythm in miniature: sentences aligned at their start frames; the whole 2.56 s song
    (64 frames) generated in one sampler call from the exact law of the aligned notes: every
    note's onset (3 frames in a row at its pitch) within one frame of its aligned start in the
    rendered audio. An alignment 0.2 s late is detected."""
    tokens = align_lyrics([[3, 4], [5], [6, 7, 8]], [0.0, 0.8, 1.6], frames=64)
    assert tokens[:3].tolist() == [3, 4, 0] and tokens[20].item() == 5
    assert tokens[40:44].tolist() == [6, 7, 8, 0] and int((tokens > 0).sum()) == 6
    starts = [i / FRAME_RATE for i in torch.nonzero(tokens[1:].ne(0) & tokens[:-1].eq(0))[:, 0]
              .add(1).tolist()]
    starts = [0.0, *starts]  # sentence starts recovered from the aligned sequence
    law, pitches = TimedNotes(64), [4, 7, 5]
    mu = law.means(pitches, starts, 0.0, 2.4)
    x = reverie.sample(law.denoiser(PROC), torch.randn(4, 64, 20, generator=gen(1),
                                                       dtype=torch.float64),
                       "dpmpp_2m", 20, cond={"mu": mu})

    def onsets(frames):  # each note's first frame of 3 in a row at its pitch
        at = np.abs(analyse(render(frames))[0][:, None] - BIN_HZ * np.array(pitches)) < 25
        run = at[:-2] & at[1:-1] & at[2:]
        return [int(np.argmax(run[:, k])) if run[:, k].any() else -1 for k in range(3)]

    for xi in x:  # to one frame (40 ms): the frame noise sometimes moves a peak
        assert np.abs(np.subtract(onsets(xi), [0, 20, 40])).max() <= 1, onsets(xi)
    shifted = law.means(pitches, [0.0, 1.0, 1.8], 0.0, 2.4)  # wrong: 0.2 s late
    xs = reverie.sample(law.denoiser(PROC), torch.randn(1, 64, 20, generator=gen(1),
                                                        dtype=torch.float64),
                        "dpmpp_2m", 20, cond={"mu": shifted})
    assert np.abs(np.subtract(onsets(xs[0]), [0, 20, 40])).max() >= 4
    with pytest.raises(ValueError, match="overlaps"):
        align_lyrics([[3, 4, 5], [6]], [0.0, 0.04], frames=64)
    with pytest.raises(ValueError, match="one start time per sentence"):
        align_lyrics([[3]], [0.0, 1.0], frames=64)
    with pytest.raises(ValueError, match="padding token"):
        align_lyrics([[0]], [0.0], frames=64)


def test_timing_net_and_bad_input():
    """The tiny timing network maps windows to windows; wrong shapes and timings are refused;
    the bench runs its cheap row."""
    net = TimingNet(32, hidden=16)
    x = torch.randn(2, 32, 20)
    cond = {"pitch": torch.tensor([4, 6]), "seconds_start": torch.zeros(2),
            "seconds_total": torch.tensor([0.5, 1.0])}
    assert net.denoiser(PROC)(x, torch.full((2,), 0.5), **cond).shape == (2, 32, 20)
    with pytest.raises(ValueError, match=r"windows must be \[B, 32, 20\]"):
        net(torch.randn(2, 16, 20), torch.full((2,), 0.5), PROC, **cond)
    law = TimedNotes(32)
    with pytest.raises(ValueError, match=r"windows must be \[B, 32, 20\]"):
        law.denoiser(PROC)(torch.randn(2, 16, 20), 0.5, mu=torch.zeros(16, 20))
    with pytest.raises(ValueError, match="one time for the whole batch"):
        law.denoiser(PROC)(torch.randn(2, 32, 20), torch.tensor([0.3, 0.5]),
                           mu=torch.zeros(32, 20))
    with pytest.raises(ValueError, match="seconds_total > 0"):
        law.means([4], [0.0], 0.0, 0.0)
    with pytest.raises(ValueError, match="increasing"):
        law.means([4, 5], [0.5, 0.2])
    with pytest.raises(ValueError, match=r"mu must be \[B, 32, 20\]"):
        law.sample(torch.zeros(32, 20))

    from reverie.bench import available, modalities

    assert available()["modalities"] is modalities
    parser = argparse.ArgumentParser()
    modalities.add_arguments(parser)
    out = modalities.run(parser.parse_args(["--only", "pointclouds", "--problems", "1",
                                            "--samples", "100"]))
    (row,) = out["rows"]
    assert row["value"] < 1.1 < row["baseline_value"], row  # BDM near the floor, recon not
    with pytest.raises(ValueError, match="unknown modality"):
        modalities.run(parser.parse_args(["--only", "video"]))
