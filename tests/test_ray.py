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


def test_generate_restore_and_likelihood_jobs_equal_one_process(local_ray):
    """One actor per job (the 2-actor split is shown above): every row is its one-process
    value, whatever batch it lands in."""
    from reverie.discrete import generate, load_model
    from reverie.inverse import MatrixOperator, solve
    from reverie.likelihood import log_likelihood

    def gen(seed):
        return torch.Generator().manual_seed(seed)

    # generate: ragged prompts in batches of 2; row k is the batch's row k less its padding
    prompts = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    ds = reverie.ray.generate_dataset("tiny-json", prompts, seed=7, batch_size=2,
                                      num_cpus=0.5, max_new_tokens=10)
    tokens, texts = reverie.ray.collect(ds, "tokens"), reverie.ray.collect(ds, "text")
    tiny = load_model("tiny-json")
    for seed, same in ((7, True), (8, False)):  # another seed: the check can fail
        one = generate(tiny, prompts, max_new_tokens=10, return_stats=True,
                       generator=reverie.seeded_generators(seed, 3))
        width = one.tokens.shape[1]
        assert all(torch.equal(t, one.tokens[k, width - len(t):]) for k, t in
                   enumerate(tokens)) == same
        assert [len(t) for t in tokens] == [len(p) + 10 for p in prompts]
        assert (texts == one.texts) == same
    # restore: 3 measurements of x + 0.3 y on two-moons, 2 MCGdiff samples each, row k from
    # seed 4 + k
    op = MatrixOperator(torch.tensor([[1.0, 0.3]]))
    y = torch.tensor([[0.5], [-1.0], [1.5]])
    ds = reverie.ray.restore_dataset("two-moons", op, y, 0.1, seed=4, samples=2, batch_size=2,
                                     num_cpus=0.5, method="mcg_diff", steps=5)
    got = reverie.ray.collect(ds, "samples")
    moons = reverie.load("two-moons")
    for seed, same in ((4, True), (5, False)):
        one = torch.stack([solve(moons.denoiser, op, y[k], 0.1, method="mcg_diff", steps=5,
                                 n=2, generator=gen(seed + k)) for k in range(3)])
        assert torch.equal(got, one) == same
    # likelihood: 10 points in chunks of 4 (4 + 4 + 2), chunk j from seed 3 + 1 + 4 j
    x = torch.randn(10, 2, generator=gen(1), dtype=torch.float64)
    ds = reverie.ray.likelihood_dataset("two-moons", x, seed=3, batch_size=4, num_cpus=0.5,
                                        rtol=1e-3, atol=1e-3)
    got = reverie.ray.collect(ds, "log_likelihood")
    for size, same in ((4, True), (5, False)):  # other chunks: other adaptive steps
        one = torch.cat([log_likelihood(moons.denoiser, x[s:s + size], rtol=1e-3, atol=1e-3,
                                        generator=gen(4 + s), sample_shape=(2,))
                         for s in range(0, 10, size)])
        assert torch.equal(got, one) == same
