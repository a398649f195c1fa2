"""Coloured shapes at known positions, with their prompts, and an exact detector for them.

The data of the bundled text-to-image model ``shapes`` (``scripts/train_shapes.py``): 32x32 RGB
images in ``[0, 1]``, black background, one shape of one colour at one of five places::

    "a red circle on the left", "a yellow triangle at the top", "a blue square in the middle"

4 colours x 3 shapes x 5 places = 60 combinations; :data:`HELD_OUT` (10 of them) are never used
for training, so prompt following can be judged on combinations the model has not seen. Each
image jitters the position (+-1.5 px), the size (radius 4..6 px) and the colour (+-0.08 per
channel), and is drawn anti-aliased (4x4 supersampling).

:func:`detect` knows how the data was drawn: the foreground is the pixels whose brightest
channel exceeds 0.4; the colour is the palette colour nearest the foreground's median colour,
the place the anchor nearest the foreground's centroid (shapes are drawn centred on their
centroid), the shape from the bounding box: a triangle's centroid sits 1/6 of the box height
below the box's middle; a square fills ~all of its box (a circle ~pi/4) and reaches ~sqrt 2
further along the diagonals than along the axes (a circle as far). :func:`prompt_follows`
also requires one object (the largest connected part holds >= 90% of the foreground) of a
drawable size, within 2.5 px of its anchor, in a colour close to the palette. On the real data
it is right 100% of the time (tests/test_shapes.py).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ANCHORS",
    "COLOURS",
    "COMBOS",
    "HELD_OUT",
    "PLACES",
    "SHAPES",
    "SIZE",
    "TRAIN_COMBOS",
    "Detection",
    "detect",
    "draw",
    "features",
    "parse_prompt",
    "prompt",
    "prompt_follows",
    "sample",
    "words",
]

SIZE = 32
#: colour name -> RGB in [0, 1].
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.15, 0.15),
    "green": (0.15, 0.8, 0.2),
    "blue": (0.2, 0.3, 0.95),
    "yellow": (0.95, 0.85, 0.15),
}
SHAPES = ("circle", "square", "triangle")
#: place (as the prompt says it) -> the shape's centroid (x, y) in pixels.
PLACES: dict[str, tuple[float, float]] = {
    "on the left": (9.0, 16.0),
    "on the right": (23.0, 16.0),
    "at the top": (16.0, 9.0),
    "at the bottom": (16.0, 23.0),
    "in the middle": (16.0, 16.0),
}
ANCHORS = torch.tensor(list(PLACES.values()))
#: every (colour, shape, place) combination, as indices.
COMBOS = tuple(itertools.product(range(len(COLOURS)), range(len(SHAPES)), range(len(PLACES))))
#: 10 combinations never used for training: two per place, each colour and shape still seen
#: at that place with other partners.
HELD_OUT = tuple(
    combo
    for k in range(len(PLACES))
    for combo in ((k % 4, k % 3, k), ((k + 2) % 4, (k + 1) % 3, k))
)
TRAIN_COMBOS = tuple(c for c in COMBOS if c not in HELD_OUT)

JITTER, RADIUS, COLOUR_JITTER, SUPERSAMPLE = 1.0, (4.5, 6.5), 0.08, 4
MAX_OFFSET = 2.5  # px from the anchor (drawn within 1.0 per axis, so within 1.42)
THRESHOLD = 0.4  # foreground: brightest channel above this (background 0, colours >= 0.72)
# triangle: centroid below the box centre by over this share of the box height (1/6 drawn);
# otherwise square when fill (share of the box covered: square 1, circle pi/4) plus the
# diagonal-to-axis extent ratio (square sqrt 2, circle 1) exceeds SQUARE_SCORE
TRIANGLE_DROP, SQUARE_SCORE = 0.08, 2.175


def prompt(colour: int, shape: int, place: int) -> str:
    """The prompt of a combination, e.g. ``"a red circle on the left"``."""
    return f"a {list(COLOURS)[colour]} {SHAPES[shape]} {list(PLACES)[place]}"


_PROMPT = re.compile(
    rf"^a ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) ({'|'.join(PLACES)})$"
)


def parse_prompt(text: str) -> tuple[int, int, int]:
    """``(colour, shape, place)`` indices of a prompt written as :func:`prompt` writes them."""
    m = _PROMPT.match(text.strip().lower())
    if m is None:
        raise ValueError(
            f"cannot read {text!r} as a shapes prompt; expected 'a COLOUR SHAPE PLACE' with "
            f"COLOUR in {list(COLOURS)}, SHAPE in {list(SHAPES)}, PLACE in {list(PLACES)}"
        )
    return list(COLOURS).index(m[1]), SHAPES.index(m[2]), list(PLACES).index(m[3])


def words() -> list[str]:
    """Every word the prompts use (the tokenizer's vocabulary)."""
    text = " ".join(prompt(*c) for c in COMBOS)
    return sorted(set(text.split()))


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------


def draw(combos: Tensor, generator: torch.Generator) -> Tensor:
    """Images ``[B, 3, 32, 32]`` in ``[0, 1]`` of ``combos`` (``LongTensor[B, 3]``: colour,
    shape, place), with seeded jitter of position, size and colour."""
    b = combos.shape[0]
    u = torch.rand(b, 6, generator=generator, dtype=torch.float64)
    centre = ANCHORS.double()[combos[:, 2]] + (2 * u[:, :2] - 1) * JITTER  # [B, 2] (x, y)
    r = RADIUS[0] + (RADIUS[1] - RADIUS[0]) * u[:, 2]
    palette = torch.tensor(list(COLOURS.values()), dtype=torch.float64)
    rgb = (palette[combos[:, 0]] + (2 * u[:, 3:] - 1) * COLOUR_JITTER).clamp(0, 1)
    s = SUPERSAMPLE
    coords = (torch.arange(SIZE * s, dtype=torch.float64) + 0.5) / s  # sub-pixel centres
    x = coords.view(1, 1, -1) - centre[:, 0].view(-1, 1, 1)
    y = coords.view(1, -1, 1) - centre[:, 1].view(-1, 1, 1)
    r = r.view(-1, 1, 1)
    circle = x**2 + y**2 <= r**2
    square = (x.abs() <= 0.85 * r) & (y.abs() <= 0.85 * r)  # about the circle's area
    # upward triangle, half-width r, height 1.8 r, centroid at (0, 0): apex at -2h/3
    h, half = 1.8 * r, r
    top = -2 * h / 3
    triangle = (y <= h / 3) & (y >= top) & (x.abs() <= half * (y - top) / h)
    kind = combos[:, 1].view(-1, 1, 1)
    mask = torch.where(kind == 0, circle, torch.where(kind == 1, square, triangle))
    cover = F.avg_pool2d(mask[:, None].double(), s)  # [B, 1, 32, 32] anti-aliased coverage
    return (cover * rgb.view(b, 3, 1, 1)).float()


def sample(
    n: int, seed: int, combos: tuple[tuple[int, int, int], ...] = TRAIN_COMBOS
) -> tuple[Tensor, list[str], Tensor]:
    """``n`` seeded images with their prompts: ``(images [n, 3, 32, 32], prompts, combos
    [n, 3])``, the combinations drawn uniformly from ``combos``."""
    g = torch.Generator().manual_seed(seed)
    table = torch.tensor(combos)
    picked = table[torch.randint(len(combos), (n,), generator=g)]
    return draw(picked, g), [prompt(*c) for c in picked.tolist()], picked


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------


@dataclass
class Detection:
    """What :func:`detect` reads off a batch of images (one entry per image)."""

    colour: Tensor  # nearest palette colour of the median foreground colour
    shape: Tensor  # bounding box: centroid drop (triangle), fill + diagonal reach (square)
    place: Tensor  # nearest anchor to the foreground centroid
    area: Tensor  # foreground pixels
    centroid: Tensor  # [B, 2] (x, y)
    colour_error: Tensor  # distance of the median colour to that palette colour
    anchor_distance: Tensor  # distance of the centroid to that anchor
    largest_part: Tensor  # share of the foreground in its largest connected part
    fill: Tensor  # foreground / bounding box
    box: Tensor  # [B, 2] bounding box width, height
    median_rgb: Tensor  # [B, 3]
    soft: Tensor  # pixels between background and foreground (edges, blur), per foreground px

    def valid(self) -> Tensor:
        """Whether each image holds one drawable object near an anchor in a palette colour."""
        # area bounds around the drawn range (the smallest triangle ~1.8 r^2, the largest
        # circle pi r^2; real images span 32..140 px): 0.3 pi r_min^2 .. 1.3 pi r_max^2
        lo, hi = 0.3 * math.pi * RADIUS[0] ** 2, 1.3 * math.pi * RADIUS[1] ** 2
        return (
            (self.area >= lo) & (self.area <= hi) & (self.largest_part >= 0.9)
            & (self.anchor_distance <= MAX_OFFSET) & (self.colour_error <= 0.35)
        )


def _largest_part(mask: Tensor) -> Tensor:
    """Share of each mask's pixels in its largest 8-connected part (label propagation)."""
    b, h, w = mask.shape
    ids = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, h, w).expand(b, h, w)
    lab = torch.where(mask, ids, torch.zeros(()))
    for _ in range(h * w):  # each pass spreads the largest id one pixel; stops when settled
        new = torch.where(mask, F.max_pool2d(lab[:, None], 3, 1, 1)[:, 0], torch.zeros(()))
        if torch.equal(new, lab):
            break
        lab = new
    counts = torch.zeros(b, h * w + 1).scatter_add_(1, lab.long().view(b, -1), torch.ones(b, h * w))
    counts[:, 0] = 0  # background
    return counts.max(1).values / mask.view(b, -1).sum(1).clamp(min=1)


def detect(images: Tensor) -> Detection:
    """Read colour, shape, place and quality measures off images ``[B, 3, 32, 32]`` in [0, 1]."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor [B, 3, H, W] in [0, 1], got {got}")
    x = images.detach().float().cpu().clamp(0, 1)
    b, _, h, w = x.shape
    bright = x.max(1).values  # [B, H, W]
    mask = bright > THRESHOLD
    area = mask.flatten(1).sum(1).float()
    safe = area.clamp(min=1)
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    centroid = torch.stack(
        [(mask * xs).flatten(1).sum(1) / safe, (mask * ys).flatten(1).sum(1) / safe], 1
    )
    place_d = torch.cdist(centroid, ANCHORS.float() * (w / SIZE))
    anchor_distance, place = place_d.min(1)
    # median colour of the foreground (background pixels pushed to +inf, then the k-th value)
    k = (area.long() - 1).clamp(min=0) // 2
    vals = torch.where(mask[:, None], x, torch.full_like(x, math.inf)).flatten(2).sort(2).values
    median = vals.gather(2, k.view(b, 1, 1).expand(b, 3, 1))[..., 0]
    median = torch.where(area.view(b, 1) > 0, median, torch.zeros_like(median))
    palette = torch.tensor(list(COLOURS.values()))
    colour_error, colour = torch.cdist(median, palette).min(1)
    rows, cols = mask.any(2), mask.any(1)  # [B, H], [B, W]
    box_h = _extent(rows)
    box_w = _extent(cols)
    fill = area / (box_h * box_w).clamp(min=1)
    drop = (centroid[:, 1] - _middle(rows)) / box_h.clamp(min=1)  # triangles sit low in the box
    diagonal = (_reach(mask, xs + ys) + _reach(mask, xs - ys)) / (2 * math.sqrt(2)) + math.sqrt(2)
    score = fill + diagonal / ((box_w + box_h) / 2).clamp(min=1)
    shape = torch.where(drop > TRIANGLE_DROP, 2, torch.where(score > SQUARE_SCORE, 1, 0))
    soft = ((bright > 0.1) & ~mask).flatten(1).sum(1) / safe
    return Detection(
        colour=colour, shape=shape, place=place, area=area, centroid=centroid,
        colour_error=colour_error, anchor_distance=anchor_distance,
        largest_part=_largest_part(mask), fill=fill, box=torch.stack([box_w, box_h], 1),
        median_rgb=median, soft=soft,
    )


def _reach(mask: Tensor, v: Tensor) -> Tensor:
    """Range of ``v [H, W]`` over each mask's pixels (0 if empty)."""
    hi = torch.where(mask, v, -math.inf).flatten(1).max(1).values
    lo = torch.where(mask, v, math.inf).flatten(1).min(1).values
    return (hi - lo).nan_to_num(0, 0, 0).clamp(min=0)


def _span(any_: Tensor) -> tuple[Tensor, Tensor]:
    """First and last index of True along the last axis (``n`` and ``-1`` when none)."""
    n = any_.shape[-1]
    idx = torch.arange(n)
    return torch.where(any_, idx, n).min(-1).values, torch.where(any_, idx, -1).max(-1).values


def _extent(any_: Tensor) -> Tensor:
    """Length of the span from the first to the last True (0 if none)."""
    first, last = _span(any_)
    return (last - first + 1).clamp(min=0).float()


def _middle(any_: Tensor) -> Tensor:
    """Pixel coordinate of the middle of that span."""
    first, last = _span(any_)
    return (first + last + 1).float() / 2


def prompt_follows(images: Tensor, prompts: str | list[str]) -> Tensor:
    """``BoolTensor[B]``: image ``k`` shows one object of the colour, shape and place its prompt
    names (one prompt for all images, or one per image)."""
    if images.ndim == 3:
        images = images[None]
    texts = [prompts] * images.shape[0] if isinstance(prompts, str) else list(prompts)
    if len(texts) != images.shape[0]:
        raise ValueError(f"{len(texts)} prompts for {images.shape[0]} images; give one or one each")
    want = torch.tensor([parse_prompt(t) for t in texts])
    d = detect(images)
    return (
        d.valid() & (d.colour == want[:, 0]) & (d.shape == want[:, 1]) & (d.place == want[:, 2])
    )


def features(images: Tensor) -> Tensor:
    """Per-image features ``[B, 11]`` for a Frechet distance: centroid (2), area, bounding box
    (2), fill, median colour (3), soft-edge share and largest-part share -- the quantities the
    data is drawn from (place, size, shape, colour) plus two that see blur and clutter. Fixed
    units, each spreading over ~1-5 on real data: pixels (centroid, box), tens of pixels
    (area), tenths (fill, colour, the two shares)."""
    d = detect(images)
    return torch.cat(
        [d.centroid, d.area[:, None] / 10, d.box, d.fill[:, None] * 10, d.median_rgb * 10,
         d.soft[:, None] * 10, d.largest_part[:, None] * 10], 1
    ).double()
