"""Ray Data batch jobs: a dataset of sample indices in, a dataset of samples out, with the model
held in actors (loaded once per actor, one actor per device or CPU slot).

Sample ``k`` depends only on ``seed + k`` (:meth:`reverie.hub.Model.sample`), so the output equals
the single-process ``model.sample(n, seed=seed)`` row for row, however Ray splits, schedules or
retries the batches. The same job runs on a laptop (``ray.init()``) or a cluster
(``ray.init(address="auto")``; see docs/distributed.md). Ray is imported only here::

    import ray, reverie.ray
    ray.init(num_cpus=2)
    ds = reverie.ray.sample_dataset("two-moons", 10_000, seed=3, concurrency=2)
    ds.write_parquet("samples/")          # or: x = reverie.ray.collect(ds)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["sample_dataset", "collect", "SampleActor"]


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError("reverie.ray needs Ray Data: pip install 'ray[data]'") from None
    return ray


class SampleActor:
    """A Ray Data ``map_batches`` callable: loads ``model`` once, then maps a batch with an
    ``id`` column (sample indices) to the same batch with a ``sample`` column."""

    def __init__(self, model: str, seed: int, threads: int | None, kwargs: dict[str, Any]):
        from reverie.hub import load

        if threads is not None:
            torch.set_num_threads(threads)
        self.model = load(model)
        self.seed = seed
        self.kwargs = kwargs

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = np.asarray(batch["id"], dtype=np.int64)
        parts, start = [], 0
        # contiguous runs of indices: model.sample(m, seed + k0) gives samples k0 .. k0 + m - 1
        for end in [*(np.nonzero(np.diff(ids) != 1)[0] + 1).tolist(), len(ids)]:
            if end > start:
                x = self.model.sample(end - start, seed=self.seed + int(ids[start]), **self.kwargs)
                parts.append(x.detach().cpu().numpy())
            start = end
        return {**batch, "sample": np.concatenate(parts) if parts else np.zeros((0,))}


def sample_dataset(
    model: str,
    n: Any,
    seed: int = 0,
    *,
    batch_size: int = 256,
    concurrency: int = 1,
    num_cpus: float = 1,
    num_gpus: float = 0,
    threads: int | None = 1,
    **kwargs: Any,
) -> Any:
    """A lazy Ray ``Dataset`` of samples of ``model`` (a bundled name or a model folder every
    worker can read): ``n`` -- a number of samples (indices ``0 .. n-1``) or a Ray dataset with
    an integer ``id`` column (e.g. the indices still missing after a partial run); sample ``k``
    is ``model.sample(n, seed=seed)[k]``. ``concurrency`` actors each hold the model and
    reserve ``num_cpus`` / ``num_gpus`` (``num_gpus=1``: one actor per GPU; leave a CPU free for
    Ray's read tasks, or they starve); ``threads`` -- torch threads per actor;
    ``kwargs`` -- :meth:`reverie.hub.Model.sample` options (``sampler``, ``steps``, ``labels``
    as an int, ...). Columns: ``id`` and ``sample``."""
    ray = _ray()
    if isinstance(n, int):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        # column "id", in blocks of batch_size rows: each batch is one contiguous block, the
        # batch shape a single process with batch_size rows would use
        ds = ray.data.range(n, override_num_blocks=-(-n // batch_size))
    elif isinstance(n, ray.data.Dataset):
        ds = n
    else:
        raise TypeError(f"n must be an int or a ray.data.Dataset with an id column, got "
                        f"{type(n).__name__}")
    if isinstance(kwargs.get("labels"), torch.Tensor):
        raise ValueError("labels must be one int for every sample in a Ray job (a per-sample "
                         "tensor is not sharded yet)")
    return ds.map_batches(
        SampleActor, fn_constructor_kwargs={"model": model, "seed": seed, "threads": threads,
                                            "kwargs": kwargs},
        batch_size=batch_size, concurrency=concurrency, num_cpus=num_cpus,
        num_gpus=num_gpus, batch_format="numpy",
    )


def collect(ds: Any) -> torch.Tensor:
    """The ``sample`` column of a (small enough) dataset as one tensor, in ``id`` order."""
    rows = sorted(ds.iter_rows(), key=lambda r: int(r["id"]))
    return torch.from_numpy(np.stack([np.asarray(r["sample"]) for r in rows]))
