"""reverie.accelerate.distill on the bundled two-moons teacher: a progressive student does in 2
steps what the teacher does in 4; a consistency student samples in 1 step far better than the
teacher's 1 DDIM step. Distances are sliced-W2 to the teacher's own 50-step law."""

import pytest
import torch

import reverie
from reverie.accelerate import METHODS
from reverie.accelerate.distill import (
    Student,
    consistency_distill,
    consistency_train,
    mmd,
    mmd_finetune,
    progressive_distill,
)
from reverie.data import two_moons
from reverie.metrics import sliced_wasserstein


@pytest.fixture(scope="module")
def setup():
    model = reverie.load("two-moons")
    data, _ = two_moons(4000, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))
    law = reverie.sample(model.denoiser, noise, sampler="dpmpp_2m", steps=50)

    def sw(x):
        return sliced_wasserstein(x, law, 128, torch.Generator().manual_seed(3))

    def teacher(steps):
        return sw(reverie.sample(model.denoiser, noise, sampler="ddim", steps=steps,
                                 grid="karras"))

    return model, data, noise, sw, teacher


def test_progressive_student_matches_the_teacher_at_twice_its_steps(setup):
    model, data, noise, sw, teacher = setup
    student = progressive_distill(model.denoiser, data, steps=2, base_steps=4, iters=60,
                                  batch=128)
    assert student.trained_steps == 2 and [h["steps"] for h in student.history] == [2]
    got, t4, t2 = sw(student.sample(noise)), teacher(4), teacher(2)
    assert got < 1.15 * t4  # 2 student steps ~ 4 teacher steps
    assert not t2 < 1.15 * t4  # sibling: the teacher at 2 steps (the untrained student) fails
    with pytest.raises(ValueError, match="progressive student was trained for 2 steps .*asked "
                                         "for 4"):
        student.sample(noise, 4)
    with pytest.raises(ValueError, match="trained for 2 steps .*asked for 3"):
        student.sample(noise, 3)
    with pytest.raises(ValueError, match="base_steps / steps must be a power of two"):
        progressive_distill(model.denoiser, data, steps=2, base_steps=6)


def test_consistency_student_samples_in_one_step(setup):
    model, data, noise, sw, teacher = setup
    student = consistency_distill(model.denoiser, data, points=8, iters=100, batch=128)
    one = sw(student.sample(noise, 1))
    assert one < 0.6 * teacher(1)  # sibling: the teacher's one DDIM step is the wrong law
    assert student.trained_steps == 8
    # 2 steps (t_8, then re-noised to the mid-grid t_4) beat 1 step; sibling: the old rule's
    # times (t_8 then t_1 ~ sigma_min, given as a 2-point grid) add nothing to the 1 step
    two = sw(student.sample(noise, 2, generator=torch.Generator().manual_seed(0)))
    old = Student(student.denoiser, "consistency", student.grid[[0, -1]])
    old_two = sw(old.sample(noise, 2, generator=torch.Generator().manual_seed(0)))
    assert two < 0.8 * one and not old_two < 0.8 * one
    student.sample(noise, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="consistency student was trained for at most 8 "
                                         "steps; asked for 9"):
        student.sample(noise, 9)
    assert METHODS["consistency"].kind == "distill"
    with pytest.raises(TypeError, match="the teacher must be a reverie.Denoiser"):
        consistency_distill(lambda x, t: x, data)


def test_consistency_training_without_a_teacher_samples_in_one_step(setup):
    """Consistency training (Algorithm 3): the lower-time point is the same data noised with the
    same noise; no teacher call. From the bundled weights, 300 iterations: 0.35 measured against
    the teacher's one DDIM step 0.79 (the untrained network's one step, the sibling)."""
    model, data, noise, sw, teacher = setup
    student = consistency_train(model.denoiser, data, points=8, iters=300, batch=128)
    assert sw(student.sample(noise, 1)) < 0.6 * teacher(1)
    assert student.kind == "consistency" and student.trained_steps == 8
    assert METHODS["consistency_train"].kind == "train"
    with pytest.raises(ValueError, match="points must be >= 2"):
        consistency_train(model.denoiser, data, points=1)


def test_mmd_finetuning_fits_the_two_step_budget(setup):
    model, data, noise, sw, teacher = setup
    student = mmd_finetune(model.denoiser, data, steps=2, iters=25, batch=128, lr=3e-4)
    assert sw(student.sample(noise)) < 0.6 * teacher(2)  # sibling: the teacher at 2 steps
    with pytest.raises(ValueError, match="mmd student was trained for 2 steps"):
        student.sample(noise, 4)


def test_mmd_is_unbiased_and_detects_a_shift():
    g = torch.Generator().manual_seed(0)
    same = [float(mmd(torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g)))
            for _ in range(20)]
    assert abs(sum(same) / 20) < 3 * torch.tensor(same).std().item() / 20**0.5
    shifted = float(mmd(torch.randn(200, 2, generator=g), 0.6 + torch.randn(200, 2, generator=g)))
    assert shifted > max(same)
