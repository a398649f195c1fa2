"""reverie.ray: a Ray Data job with the model in 2 actors on a local Ray instance equals the
single-process samples (skipped without Ray)."""

import pytest
import torch

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

import reverie  # noqa: E402
import reverie.ray  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def test_ray_job_equals_one_process(local_ray):
    # batches of 16 rows: two-moons' MLP gives the same row bitwise in any batch of >= 16 rows
    # on this CPU (smaller batches take other BLAS kernels; docs/distributed.md)
    ds = reverie.ray.sample_dataset("two-moons", 48, seed=3, batch_size=16, concurrency=2,
                                        num_cpus=0.5)  # 2 actors leave a CPU to the reads
    got = reverie.ray.collect(ds)
    model = reverie.load("two-moons")
    assert torch.equal(got, model.sample(48, seed=3))
    assert not torch.equal(got, model.sample(48, seed=4))  # the check can fail
    # a dataset of indices (e.g. the missing ones) gives exactly those rows
    part = reverie.ray.collect(reverie.ray.sample_dataset(
        "two-moons", ray.data.from_items([{"id": k} for k in range(40, 56)]), seed=3, num_cpus=0.5))
    assert torch.equal(part, model.sample(56, seed=3)[40:])
