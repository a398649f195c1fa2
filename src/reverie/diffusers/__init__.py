"""``reverie.diffusers``: reverie samplers inside diffusers pipelines.

``pipe.scheduler = reverie.diffusers.Scheduler(sampler="ipndm", config=pipe.scheduler.config)``
(see :mod:`reverie.diffusers_scheduler`). Importing this package imports diffusers.
"""

from reverie.diffusers_scheduler import (
    ONE_CALL_SAMPLERS,
    Scheduler,
    SchedulerMixin,
    SchedulerOutput,
)

__all__ = ["ONE_CALL_SAMPLERS", "Scheduler", "SchedulerMixin", "SchedulerOutput"]
