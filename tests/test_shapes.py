"""The shapes data, its exact detector, and the bundled text-to-image model ``shapes``."""

from __future__ import annotations

import pytest
import torch

import reverie
from reverie import shapes
from reverie.cli import main
from reverie.pipelines import StableDiffusion

#: the guidance scale `reverie bench shapes` selected (benchmarks/results/shapes.json)
GUIDANCE = 1.5


@pytest.fixture(scope="module")
def real():
    """Two images of every combination (120), with their prompts and combinations."""
    combos = torch.tensor(shapes.COMBOS).repeat(2, 1)
    images = shapes.draw(combos, torch.Generator().manual_seed(0))
    return images, [shapes.prompt(*c) for c in combos.tolist()], combos


def test_detector_reads_real_images_exactly(real):
    images, prompts, combos = real
    d = shapes.detect(images)
    assert torch.equal(d.colour, combos[:, 0]) and torch.equal(d.shape, combos[:, 1])
    assert torch.equal(d.place, combos[:, 2]) and bool(d.valid().all())
    assert bool(shapes.prompt_follows(images, prompts).all())
    more, more_prompts, _ = shapes.sample(1000, seed=1, combos=shapes.COMBOS)
    assert bool(shapes.prompt_follows(more, more_prompts).all())


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_detector_rejects_a_wrong_colour_shape_or_place(real, axis):
    """The sibling: the same prompts on images drawn with one attribute changed (another
    colour, another shape, the shape shifted to another place) are all rejected."""
    _, prompts, combos = real
    wrong = combos.clone()
    wrong[:, axis] = (wrong[:, axis] + 1) % (len(shapes.COLOURS), len(shapes.SHAPES),
                                              len(shapes.PLACES))[axis]
    images = shapes.draw(wrong, torch.Generator().manual_seed(0))
    assert not bool(shapes.prompt_follows(images, prompts).any())


def test_detector_rejects_clutter_blank_and_half_shifts(real):
    images, prompts, _ = real
    assert not bool(shapes.prompt_follows(torch.zeros_like(images), prompts).any())
    two = (images + images.roll(1, 0)).clamp(0, 1)  # a second object from another image
    assert shapes.prompt_follows(two, prompts).float().mean() < 0.05
    shifted = images.roll(5, -1)  # 5 px to the right: more than the anchors' tolerance
    assert shapes.prompt_follows(shifted, prompts).float().mean() < 0.05


def test_prompts_parse_and_bad_prompts_are_refused():
    assert shapes.parse_prompt("a red circle on the left") == (0, 0, 0)
    assert len(shapes.TRAIN_COMBOS) + len(shapes.HELD_OUT) == len(shapes.COMBOS) == 60
    with pytest.raises(ValueError, match="cannot read 'a purple circle on the left'"):
        shapes.parse_prompt("a purple circle on the left")


# ---------------------------------------------------------------------------------------------
# The bundled model
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe():
    return reverie.load("shapes")


def test_bundled_shapes_loads_and_samples(pipe):
    assert isinstance(pipe, StableDiffusion) and pipe.name == "shapes"
    assert pipe.sample_shape == (4, 8, 8) and pipe.vae_scale_factor == 4
    for word in shapes.words():  # the written tokenizer keeps every prompt word whole
        assert len(pipe.tokenizer.tokenize(word)) == 1
    x = pipe.sample(["a green triangle on the left"] * 2, steps=4, output_type="pt",
                    generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 32, 32) and bool(torch.isfinite(x).all())


def test_bundled_shapes_follows_held_out_prompts(pipe):
    """20 images of the 10 held-out prompts at the defaults (dpmpp_2m, 20 steps, the selected
    guidance) follow their prompts; judged against the wrong prompt (each image against the
    next held-out prompt) or sampled without the prompt (guidance 0) they do not."""
    prompts = [shapes.prompt(*c) for c in shapes.HELD_OUT] * 2
    g = torch.Generator().manual_seed(0)
    x = pipe.sample(prompts, steps=20, guidance_scale=GUIDANCE, generator=g, output_type="pt")
    right = shapes.prompt_follows(x, prompts).float().mean()
    swapped = shapes.prompt_follows(x, prompts[1:] + prompts[:1]).float().mean()
    g = torch.Generator().manual_seed(0)
    x0 = pipe.sample(prompts, steps=20, guidance_scale=0.0, generator=g, output_type="pt")
    unconditional = shapes.prompt_follows(x0, prompts).float().mean()
    assert right >= 0.75, right
    assert swapped <= 0.15 and unconditional <= 0.25, (swapped, unconditional)


def test_cli_samples_the_bundled_shapes(tmp_path, capsys):
    out = tmp_path / "x.png"
    rc = main(["sample", "--model", "shapes", "--prompt", "a green triangle on the left",
               "--steps", "4", "--n", "2", "--quiet", "--out", str(out)])
    assert rc == 0 and out.stat().st_size > 0
