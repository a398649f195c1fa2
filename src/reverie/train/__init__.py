"""Training Gaussian diffusion models: the loop (:mod:`reverie.train.loop`) and the bundled
models' recipes (:mod:`reverie.train.recipes`)."""

from reverie.train.loop import (
    OBJECTIVES,
    TIME_SAMPLINGS,
    Objective,
    TrainResult,
    draw_batch,
    ema_update,
    load_checkpoint,
    make_objective,
    save_checkpoint,
    train,
)
from reverie.train.loop import (
    _sample_times as _sample_times,  # private, for tests
)
from reverie.train.loop import (
    _target as _target,  # private, for tests
)
from reverie.train.recipes import DIGITS_SCHEDULER, RECIPES, train_bundled

__all__ = [
    "DIGITS_SCHEDULER",
    "OBJECTIVES",
    "RECIPES",
    "TIME_SAMPLINGS",
    "Objective",
    "TrainResult",
    "draw_batch",
    "ema_update",
    "load_checkpoint",
    "make_objective",
    "save_checkpoint",
    "train",
    "train_bundled",
]
