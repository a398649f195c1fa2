"""``reverie bench pipelines`` on a tiny SD-1.x-shaped pipeline: the result's structure, finite
positive timings, the three sides computing the same images, the memory measurement."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from reverie.bench import available
from reverie.bench import pipelines as bench


def test_bench_pipelines_smoke(tmp_path):
    assert available()["pipelines"] is bench  # discovered as `reverie bench pipelines`
    folder = tmp_path / "sd"
    bench.build_folder(folder, 64, (8, 16, 16, 16))
    args = argparse.Namespace(model=str(folder), size=None, channels="8,16,16,16", steps=2,
                              repeats=2, threads=1, dtype="float32", no_memory=True)
    result = bench.run(args)
    assert result["config"]["latents"] == [1, 4, 8, 8] and result["config"]["steps"] == 2
    assert set(result["sides"]) == {"reverie", "scheduler", "diffusers"}
    for name, row in result["sides"].items():
        for clock in ("", "cpu_"):  # wall-clock and CPU time
            for key in ("total_ms", "unet_ms", "text_ms", "vae_ms", "overhead_ms"):
                value = row[clock + key]
                assert math.isfinite(value) and value > 0, (name, clock + key, value)
            assert row[f"{clock}total_ms"] > row[f"{clock}unet_ms"] + row[f"{clock}overhead_ms"]
            assert len(row[f"{clock}overhead_ms_runs"]) == 2
            ratio = row[f"{clock}overhead_ratio"]
            assert math.isfinite(ratio) and ratio > 0
        # the same run: the same images on every side, to float rounding
        assert row["max_abs_diff_vs_diffusers"] < 1e-4
    assert result["sides"]["diffusers"]["cpu_overhead_ratio"] == 1.0
    alone = result["scheduler_alone"]
    assert alone["reverie_cpu_us"] > 0 and alone["diffusers_cpu_us"] > 0
    assert math.isfinite(alone["ratio"])

    # the memory measurement (in this process; the bench runs it in a fresh one per side)
    side = bench._make_side("scheduler", folder, 2, torch.float32)
    mem = bench.call_peak_mib(side, bench._latents(folder, torch.float32), calls=1)
    assert 0 <= mem["loop_peak_mib"] <= mem["peak_mib"] and mem["loaded_mib"] > 0
    assert len(mem["peak_mib_calls"]) == 1
    with pytest.raises(ValueError, match="unknown side 'other'"):
        bench._make_side("other", folder, 2, torch.float32)
    with pytest.raises(ValueError, match="four UNet block widths"):
        bench.build_folder(tmp_path / "bad", 64, (8, 16))
