"""Acceleration: training-free step reuse and few-step students (issue 20, row M11).

Registered in :data:`METHODS` (``reverie.accelerate.METHODS["deepcache"]``):

* ``deepcache``, ``feature_inheritance`` (kind ``"cache"``): forward-hook block caching across
  network calls (:mod:`reverie.accelerate.cache`); call ``fn(net, steps, ...)`` and sample
  inside the returned :class:`BlockCache` (a context manager);
* ``parastep`` (kind ``"sampler"``): reuse-then-predict parallel denoising
  (:mod:`reverie.accelerate.parastep`);
* ``progressive``, ``consistency``, ``mmd`` (kind ``"distill"``): students trained from a
  teacher (:mod:`reverie.accelerate.distill`); ``imagine_flash`` (kind ``"distill"``):
  backward distillation with noise correction (:mod:`reverie.accelerate.flash`);
  ``pnp_distill`` (kind ``"distill"``): a guide that reproduces CFG in one call
  (:mod:`reverie.accelerate.pnp`);
* ``ld_pruner`` (kind ``"prune"``): LD-Pruner structured pruning (:mod:`reverie.accelerate.prune`);
* ``imm`` (kind ``"train"``): inductive moment matching, a few-step pushforward trained from
  data without a teacher (:mod:`reverie.accelerate.imm`); ``consistency_train`` (kind
  ``"train"``): consistency training, no teacher (:mod:`reverie.accelerate.distill`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from reverie._registry import Registry
from reverie.accelerate.cache import (
    BlockCache,
    deepcache,
    deepcache_blocks,
    feature_inheritance,
    nonuniform_refresh,
    uniform_refresh,
)
from reverie.accelerate.parastep import ParaStepOutput, parastep

__all__ = [
    "METHODS",
    "BlockCache",
    "Method",
    "ParaStepOutput",
    "deepcache",
    "deepcache_blocks",
    "feature_inheritance",
    "nonuniform_refresh",
    "parastep",
    "register",
    "uniform_refresh",
]


@dataclass(frozen=True)
class Method:
    """A registered acceleration method: ``kind`` is ``cache`` (wraps a network for a run),
    ``sampler`` (draws samples), ``distill`` (trains a student), ``train`` (trains a few-step
    model from data alone) or ``prune`` (prunes a copy);
    ``paper`` cites it."""

    name: str
    fn: Callable
    kind: str
    paper: str
    description: str


METHODS: Registry[Method] = Registry("acceleration method", "METHODS")


def register(name: str, fn: Callable, kind: str, paper: str, description: str) -> Callable:
    METHODS.add(Method(name, fn, kind, paper, description))
    return fn


register("deepcache", deepcache, "cache", "Ma, Fang & Wang 2024 (DeepCache)",
         "reuse a U-Net's deep features (or a transformer's middle residuals) for the next "
         "interval-1 calls; uniform or non-uniform refresh schedule")
register("feature_inheritance", feature_inheritance, "cache", "A-SDM, Zhu et al. 2024 (paper 27)",
         "chosen blocks inherit their previous-step output on alternate calls (all/early/late)")
register("parastep", parastep, "sampler", "ParaStep, Wang et al. 2025 (paper 98)",
         "reuse-then-predict rounds of P steps: P independent network calls per round")

from reverie.accelerate import cond_distill as _codi  # noqa: E402,F401  (registers cond_distill)
from reverie.accelerate import distill as _distill  # noqa: E402,F401  (registers its trainers)
from reverie.accelerate import flash as _flash  # noqa: E402,F401  (registers imagine_flash)
from reverie.accelerate import imm as _imm  # noqa: E402,F401  (registers imm)
from reverie.accelerate import pnp as _pnp  # noqa: E402,F401  (registers pnp_distill)
from reverie.accelerate import prune as _prune  # noqa: E402,F401  (registers LD-Pruner)
from reverie.accelerate import scalewise as _scalewise  # noqa: E402,F401  (registers scalewise)
