"""The request queue and dynamic batcher of ``reverie serve``.

Requests become :class:`Job` objects with a *key*: jobs with equal keys (same model, sampler,
steps, temperature, new-token count, stop strings, constraint) can share one model call.
:class:`Batcher` keeps one FIFO queue, bounded by ``max_queue`` requests (:class:`QueueFull`
beyond, which the app answers with 429). One dispatcher task takes the oldest job, waits a
little for compatible ones (:meth:`Batcher._gather`: until the demand seen during its key's
last batch is there, while they keep arriving less than ``wait`` seconds apart), and runs them
together -- up to ``max_batch`` rows (a single larger request runs alone, never split) --
in one worker thread, so the event loop stays free and the model sees one call at a time.

A job whose client went away or whose time ran out is cancelled: a queued one leaves the
queue; a running one has its result dropped, and when every job of a running text batch is
cancelled the generation stops before its next model call. When a batch raises, its jobs
that have not streamed anything yet are re-run one by one, so a request that breaks the
model (a fault, or input only the model detects) fails alone and the others are served.

:func:`run_text` is the runner of masked-diffusion LM jobs: one
:func:`reverie.discrete.generate` call over the ragged batch of every row of every job (one
``torch.Generator`` per row, seeded by its request, so a row does not depend on its batch),
streaming committed text to the jobs that asked for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from reverie.serve.schemas import TextResult

__all__ = ["Batcher", "Job", "QueueFull", "TextWork", "run_text"]

log = logging.getLogger("reverie.serve")


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests already."""


@dataclass(eq=False)
class Job:
    """One request: ``rows`` samples, ``work`` for ``runner(jobs)`` (which runs in the worker
    thread and calls :meth:`finish` or :meth:`fail` on every job it is given). Events reach
    the request's coroutine through an asyncio queue: ``("piece", row, text)`` while
    streaming, then ``("done", result)`` or ``("error", exception)``."""

    key: Hashable
    rows: int
    work: Any
    runner: Callable[[list[Job]], None]
    stream: bool = False
    cancelled: bool = False
    finished: bool = False
    emitted: bool = False  # streamed at least one piece (then it is never re-run)
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)

    def _put(self, item: tuple) -> None:
        assert self.loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)

    def piece(self, row: int, text: str) -> None:
        if not self.cancelled and not self.finished:
            self.emitted = True
            self._put(("piece", row, text))

    def finish(self, result: Any) -> None:
        if not self.finished:
            self.finished = True
            self._put(("done", result))

    def fail(self, error: BaseException) -> None:
        if not self.finished:
            self.finished = True
            self._put(("error", error))

    async def result(self) -> Any:
        """The result (skipping streamed pieces); raises the job's error."""
        while True:
            event = await self.events.get()
            if event[0] == "done":
                return event[1]
            if event[0] == "error":
                raise event[1]


class Batcher:
    """The bounded queue and its dispatcher (module notes). ``metrics``: a
    :class:`~reverie.serve.metrics.Metrics` (or ``None``)."""

    def __init__(self, *, max_batch: int = 32, max_queue: int = 256, wait: float = 0.02,
                 metrics: Any = None) -> None:
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.wait = wait
        self.metrics = metrics
        self.pending: list[Job] = []
        self._load: dict[Hashable, int] = {}  # rows asked for during each key's last batch
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="reverie-model")
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    # --- the event-loop side ---

    def submit(self, job: Job) -> None:
        """Queue ``job`` (raises :class:`QueueFull`); starts the dispatcher on first use."""
        if len(self.pending) >= self.max_queue:
            raise QueueFull(f"the queue is full ({self.max_queue} requests waiting); retry later")
        job.loop = asyncio.get_running_loop()
        self._start()
        self.pending.append(job)
        self._depth()
        self._wake.set()

    def cancel(self, job: Job) -> None:
        """Cancel ``job``: out of the queue if it waits there; its result is dropped if it
        runs (and its batch stops once all of its jobs are cancelled)."""
        job.cancelled = True
        if job in self.pending:
            self.pending.remove(job)
            self._depth()

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the model thread (e.g. compiling a constraint, which shares
        caches with the model calls)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._dispatch())

    def _depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self.pending))

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.pending:
                self._wake.clear()
                await self._wake.wait()
            await self._gather(self.pending[0].key)
            batch = self._take()
            if not batch:
                continue
            if self.metrics is not None:
                self.metrics.batch_rows.observe(sum(j.rows for j in batch))
                self.metrics.batch_requests.observe(len(batch))
            try:
                await loop.run_in_executor(self.executor, self._run, batch)
            except RuntimeError:  # the executor was shut down: the server is stopping
                return
            # the demand for this key: the rows served plus those that came in meanwhile
            key = batch[0].key
            self._load.pop(key, None)
            self._load[key] = sum(j.rows for j in batch) + self._rows(key)
            while len(self._load) > 1024:  # keys are per request settings: keep recent ones
                del self._load[next(iter(self._load))]

    async def _gather(self, key: Hashable) -> None:
        """Wait for compatible requests to join the oldest one: until the rows of its key
        reach its demand during its previous batch (the rows served plus those that arrived
        meanwhile: clients answered together tend to come back together) or ``max_batch``,
        while they keep arriving less than ``wait`` apart, and at most ``10 * wait`` in
        all. A lone client never waits (after its first request)."""
        target = min(self.max_batch, self._load.get(key, self.max_batch))
        deadline = time.monotonic() + 10 * self.wait
        while self._rows(key) < target:
            left = min(self.wait, deadline - time.monotonic())
            if left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except asyncio.TimeoutError:
                return  # nothing arrived for `wait` seconds

    def _rows(self, key: Hashable) -> int:
        return sum(j.rows for j in self.pending if j.key == key)

    def _take(self) -> list[Job]:
        """The oldest job and the compatible jobs after it, up to ``max_batch`` rows."""
        self.pending = [j for j in self.pending if not j.cancelled]
        if not self.pending:
            self._depth()
            return []
        head, batch, rows = self.pending[0], [], 0
        for job in self.pending:
            if job.key == head.key and (not batch or rows + job.rows <= self.max_batch):
                batch.append(job)
                rows += job.rows
        self.pending = [j for j in self.pending if j not in batch]
        self._depth()
        return batch

    # --- the worker-thread side ---

    def _run(self, jobs: list[Job]) -> None:
        t0 = time.perf_counter()
        try:
            jobs[0].runner(jobs)
        except Exception as err:
            if len(jobs) == 1:
                jobs[0].fail(err)
            else:  # find the request that broke the batch: re-run the others one by one
                log.warning("a batch of %d requests failed (%s: %s); running them one by one",
                            len(jobs), type(err).__name__, err)
                for job in jobs:
                    if job.emitted:
                        job.fail(err)
                    elif not (job.finished or job.cancelled):
                        self._run([job])
        finally:
            if self.metrics is not None:
                self.metrics.call_seconds.observe(time.perf_counter() - t0)
        for job in jobs:
            if not (job.finished or job.cancelled):
                job.fail(RuntimeError("the model call ended without a result for this request"))


# ---------------------------------------------------------------------------------------------
# Text jobs
# ---------------------------------------------------------------------------------------------


@dataclass
class TextWork:
    """What one text request asks of :func:`run_text`: token-id prompts and a seed per row,
    and the :func:`~reverie.discrete.generate` settings its key stands for."""

    model: Any
    prompts: list[Any]  # LongTensor [P_r] per row
    seeds: list[int]
    max_new_tokens: int
    sampler: str
    steps: int | None
    temperature: float
    stop: list[str]
    constraint: Any = None
    eos_id: int | None = None
    metrics: Any = None


def count_tokens(model: Any, text: str) -> int:
    """Tokens of ``text`` under ``model``'s tokenizer (no special tokens added)."""
    tok = model.tokenizer
    try:
        return len(tok.encode(text, add_special_tokens=False))
    except TypeError:  # reverie's CharTokenizer takes no options
        return len(tok.encode(text))


def run_text(jobs: list[Job]) -> None:
    """One :func:`reverie.discrete.generate` call for all rows of ``jobs`` (equal keys)."""
    import torch

    from reverie.discrete import SAMPLERS, generate
    from reverie.discrete.generate import Cancelled

    w: TextWork = jobs[0].work
    owner = [(job, i) for job in jobs for i in range(job.rows)]  # batch row -> (job, its row)
    prompts = [p for job in jobs for p in job.work.prompts]
    gens = [torch.Generator().manual_seed(s) for job in jobs for s in job.work.seeds]
    revises = SAMPLERS[w.sampler].revises  # such samplers cannot stream, stop or end at EOS
    t0 = time.perf_counter()
    model = w.model
    # one constraint per row (requests with different schemas share the call), or none
    per_row = [job.work.constraint for job in jobs for _ in range(job.rows)]
    common = dict(max_new_tokens=w.max_new_tokens, steps=w.steps, sampler=w.sampler,
                  temperature=w.temperature, generator=gens,
                  constraint=per_row if any(c is not None for c in per_row) else None,
                  cancel=lambda: all(j.cancelled for j in jobs))  # checked before model calls
    try:
        if revises:
            texts = generate(model, prompt=prompts, return_stats=True, **common).texts
        else:
            texts = [""] * len(owner)
            pieces = generate(model, prompt=prompts, stop=w.stop or None, eos_id=w.eos_id,
                              stream=True, **common)
            try:
                for piece in pieces:
                    texts[piece.row] += piece
                    job, i = owner[piece.row]
                    if job.stream:
                        job.piece(i, str(piece))
            finally:
                pieces.close()
    except Cancelled:
        return  # nobody waits for this batch any more
    seconds = time.perf_counter() - t0
    counts = [count_tokens(w.model, t) for t in texts]
    if w.metrics is not None:
        w.metrics.tokens.inc(sum(counts))
        w.metrics.tokens_per_second.set(sum(counts) / max(seconds, 1e-9))
    at = 0
    for job in jobs:
        span = slice(at, at + job.rows)
        at += job.rows
        n = counts[span]
        job.finish(TextResult(
            texts=texts[span],
            finish_reasons=["length" if k >= w.max_new_tokens else "stop" for k in n],
            completion_tokens=n,
        ))
