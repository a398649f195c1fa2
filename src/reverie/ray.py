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

The other jobs take a dataset of rows, each with its own seed ``seed + id``, and equal their
one-process form row for row: :func:`generate_dataset` (prompts in, tokens and texts out),
:func:`restore_dataset` (measurements in, posterior samples out) and
:func:`likelihood_dataset` (data rows in, log-likelihoods out, computed in the chunks of
``batch_size`` consecutive ids that ``reverie likelihood --batch-size`` uses).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["sample_dataset", "generate_dataset", "restore_dataset", "likelihood_dataset",
           "collect", "SampleActor", "GenerateActor", "RestoreActor", "LikelihoodActor"]


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


def collect(ds: Any, column: str = "sample") -> Any:
    """A column of a (small enough) dataset in ``id`` order: one tensor, or a list where the
    rows are ragged (tokens) or not arrays (texts)."""
    rows = [np.asarray(r[column]) if not isinstance(r[column], str) else r[column]
            for r in sorted(ds.iter_rows(), key=lambda r: int(r["id"]))]
    if all(isinstance(r, np.ndarray) for r in rows) and len({r.shape for r in rows}) == 1:
        return torch.from_numpy(np.stack(rows))
    return [torch.from_numpy(r) if isinstance(r, np.ndarray) else r for r in rows]


# ---------------------------------------------------------------------------------------------
# Jobs over datasets of rows: generate, restore, likelihood
# ---------------------------------------------------------------------------------------------


def _rows(data: Any, column: str, batch_size: int) -> Any:
    """A dataset with the columns ``id`` and ``column`` from a list / array / tensor of rows,
    in blocks of ``batch_size`` consecutive ids; a Ray dataset (with both columns) as is."""
    ray = _ray()
    if isinstance(data, ray.data.Dataset):
        return data
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    if isinstance(data, str) or not hasattr(data, "__len__") or len(data) == 0:
        raise TypeError(f"expected a non-empty list / array of rows or a ray.data.Dataset with "
                        f"id and {column} columns, got {type(data).__name__}")
    import pandas as pd

    n = len(data)
    return ray.data.from_pandas([
        pd.DataFrame({"id": np.arange(lo, min(lo + batch_size, n)),
                      column: list(data[lo:lo + batch_size])})
        for lo in range(0, n, batch_size)])


def _job(ds: Any, actor: type, kwargs: dict[str, Any], batch_size: int, concurrency: int,
         num_cpus: float, num_gpus: float) -> Any:
    return ds.map_batches(actor, fn_constructor_kwargs=kwargs, batch_size=batch_size,
                          concurrency=concurrency, num_cpus=num_cpus, num_gpus=num_gpus,
                          batch_format="numpy")


def _objects(items: list[Any]) -> np.ndarray:
    """A 1-D object array of ``items`` (ragged token rows stay one entry each)."""
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


class GenerateActor:
    """Loads a token model (:func:`reverie.discrete.load_model`) once; maps a batch with ``id``
    and ``prompt`` (text or token ids) columns to ``tokens`` (each row's own canvas: its
    prompt and generated tokens, without the left padding of a batch) and ``text``."""

    def __init__(self, model: str, seed: int, threads: int | None, kwargs: dict[str, Any]):
        from reverie.discrete import load_model

        if threads is not None:
            torch.set_num_threads(threads)
        self.model = load_model(model)
        self.seed, self.kwargs = seed, kwargs

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from reverie.discrete.generate import _prompt_rows, generate

        prompts = [p if isinstance(p, str) else [int(t) for t in p] for p in batch["prompt"]]
        rows = _prompt_rows(self.model, prompts, 1, bool(self.kwargs.get("chat")))
        gens = [torch.Generator().manual_seed(self.seed + int(k)) for k in batch["id"]]
        out = generate(self.model, prompts, generator=gens, return_stats=True, **self.kwargs)
        width = out.tokens.shape[1]
        new = self.kwargs.get("max_new_tokens")
        tokens = [out.tokens[k, width - (len(r) + new if new is not None else width):].numpy()
                  for k, r in enumerate(rows)]
        texts = out.texts if out.texts is not None else [""] * len(rows)
        return {**batch, "tokens": _objects(tokens), "text": _objects(list(texts))}


def generate_dataset(model: str, prompts: Any, seed: int = 0, *, batch_size: int = 64,
                     concurrency: int = 1, num_cpus: float = 1, num_gpus: float = 0,
                     threads: int | None = 1, **kwargs: Any) -> Any:
    """A lazy Ray ``Dataset`` of generations of the token model ``model`` (a bundled name or
    folder every worker can read) for ``prompts`` (a list of texts / token-id lists, or a Ray
    dataset with ``id`` and ``prompt`` columns): row ``k`` is generated with the generator
    seeded ``seed + k``, so it equals row ``k`` of ``generate(model, prompts,
    generator=seeded_generators(seed, n), **kwargs)`` less that batch's left padding.
    ``kwargs`` -- :func:`reverie.discrete.generate` options (``max_new_tokens``, ``steps``,
    ``sampler``, ...). Columns: ``id``, ``prompt``, ``tokens``, ``text``."""
    if kwargs.get("stream") or kwargs.get("distributed"):
        raise ValueError("generate_dataset takes neither stream=True nor distributed=True")
    ds = _rows(prompts, "prompt", batch_size)
    return _job(ds, GenerateActor, {"model": model, "seed": seed, "threads": threads,
                                    "kwargs": kwargs}, batch_size, concurrency, num_cpus,
                num_gpus)


class RestoreActor:
    """Loads ``model`` once; maps a batch with ``id`` and ``y`` (one measurement a row)
    columns to ``samples``: ``samples`` posterior samples of each row, by
    :func:`reverie.inverse.solve` with the generator seeded ``seed + id``."""

    def __init__(self, model: str, operator: Any, noise_std: Any, samples: int, seed: int,
                 threads: int | None, kwargs: dict[str, Any]):
        from reverie.hub import load

        if threads is not None:
            torch.set_num_threads(threads)
        self.model = load(model)
        self.operator, self.noise_std, self.samples = operator, noise_std, samples
        self.seed, self.kwargs = seed, kwargs

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from reverie.inverse import solve

        out = [solve(self.model.denoiser, self.operator, torch.as_tensor(np.asarray(y)),
                     self.noise_std, n=self.samples,
                     generator=torch.Generator().manual_seed(self.seed + int(k)),
                     **self.kwargs).detach().cpu().numpy()
               for k, y in zip(batch["id"], batch["y"])]
        return {**batch, "samples": np.stack(out)}


def restore_dataset(model: str, operator: Any, y: Any, noise_std: Any, seed: int = 0, *,
                    samples: int = 1, batch_size: int = 16, concurrency: int = 1,
                    num_cpus: float = 1, num_gpus: float = 0, threads: int | None = 1,
                    **kwargs: Any) -> Any:
    """A lazy Ray ``Dataset`` of posterior samples for many measurements: ``y`` -- a tensor /
    array / list of measurements (one a row) or a Ray dataset with ``id`` and ``y`` columns;
    ``operator`` / ``noise_std`` -- as for :func:`reverie.inverse.solve` (picklable: they
    travel to the actors); row ``k`` holds ``solve(model.denoiser, operator, y[k], noise_std,
    n=samples, generator=torch.Generator().manual_seed(seed + k), **kwargs)``. ``kwargs`` --
    ``method``, ``steps``, ``particles``, ... Columns: ``id``, ``y``, ``samples``."""
    ds = _rows(y, "y", batch_size)
    return _job(ds, RestoreActor, {"model": model, "operator": operator, "noise_std": noise_std,
                                   "samples": samples, "seed": seed, "threads": threads,
                                   "kwargs": kwargs}, batch_size, concurrency, num_cpus,
                num_gpus)


class LikelihoodActor:
    """Loads ``model`` once; maps a batch with ``id`` and ``x`` columns to ``log_likelihood``
    (float64), computed in chunks of ``chunk`` consecutive ids (chunk ``j`` with the generator
    seeded ``seed + 1 + j * chunk``, as ``reverie likelihood --batch-size chunk`` does)."""

    def __init__(self, model: str, seed: int, chunk: int, threads: int | None,
                 kwargs: dict[str, Any]):
        from reverie.hub import load

        if threads is not None:
            torch.set_num_threads(threads)
        self.model = load(model)
        self.seed, self.chunk, self.kwargs = seed, chunk, kwargs

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from reverie.likelihood import log_likelihood

        ids = np.asarray(batch["id"], dtype=np.int64)
        x = torch.from_numpy(np.stack([np.asarray(r) for r in batch["x"]])).to(torch.float64)
        out = np.zeros(len(ids))
        for start in (np.unique(ids // self.chunk) * self.chunk).tolist():
            rows = np.nonzero((ids >= start) & (ids < start + self.chunk))[0]
            ll = log_likelihood(self.model.denoiser, x[rows],
                                generator=torch.Generator().manual_seed(self.seed + 1 + start),
                                sample_shape=self.model.sample_shape, **self.kwargs)
            out[rows] = ll.numpy()
        return {**batch, "log_likelihood": out}


def likelihood_dataset(model: str, x: Any, seed: int = 0, *, batch_size: int = 64,
                       concurrency: int = 1, num_cpus: float = 1, num_gpus: float = 0,
                       threads: int | None = 1, **kwargs: Any) -> Any:
    """A lazy Ray ``Dataset`` of ``log p(x)`` under ``model`` for the rows of ``x`` (a tensor /
    array, or a Ray dataset with ``id`` and ``x`` columns): the rows of ids ``j * batch_size
    .. (j + 1) * batch_size - 1`` are one :func:`reverie.likelihood.log_likelihood` call with
    the generator seeded ``seed + 1 + j * batch_size`` (float64), so the column equals
    ``reverie likelihood --batch-size batch_size --seed seed`` on the same points. (A dataset
    you pass should hold those rows in one batch each; a chunk split over two batches is
    computed in two parts.) ``kwargs`` -- ``log_likelihood`` options (``divergence``,
    ``rtol``, ...). Columns: ``id``, ``x``, ``log_likelihood``."""
    ds = _rows(x, "x", batch_size)
    return _job(ds, LikelihoodActor, {"model": model, "seed": seed, "chunk": batch_size,
                                      "threads": threads, "kwargs": kwargs}, batch_size,
                concurrency, num_cpus, num_gpus)
