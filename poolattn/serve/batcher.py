"""Dynamic batching: one inference thread fed by a bounded queue of tokenized inputs from many requests.

Requests put their inputs (token ids) on the queue and await an asyncio future. The worker takes a *round* (every
input waiting when it wakes, oldest first, up to `round_size`, then the rest of the last request it took), sorts it
by length so each batch pads little, cuts it into batches of at most `batch_tokens` padded tokens and
`max_batch_size` inputs, and encodes them. A request's future is resolved once all its inputs are done. Rounds keep it fair: later arrivals wait for the
current round, so a stream of short inputs cannot starve a long one. Inputs of requests that went away (client
disconnected, handler cancelled) are dropped before they are encoded.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .metrics import Metrics

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More inputs are waiting or being encoded than the queue holds; the client should retry later (429)."""


@dataclass
class _Job:
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    result: np.ndarray | None = None
    remaining: int = 0

    @property
    def cancelled(self) -> bool:
        return self.future.done()

    def resolve(self, value: np.ndarray | BaseException) -> None:
        def settle():
            if self.future.done():  # cancelled meanwhile
                return
            if isinstance(value, BaseException):
                self.future.set_exception(value)
            else:
                self.future.set_result(value)
        self.loop.call_soon_threadsafe(settle)


@dataclass
class _Item:
    job: _Job
    index: int
    payload: object  # what encode() takes, e.g. (token ids, instruction length)
    length: int  # tokens
    enqueued: float = field(default_factory=time.perf_counter)


def plan_batches(lengths: list[int], batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Positions of `lengths` grouped into batches: longest first, each batch's padded size (inputs x longest)
    within `batch_tokens` and at most `max_batch_size` inputs; an input longer than the budget goes alone."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches:
            batch = batches[-1]
            width = lengths[batch[0]]  # the longest, as sorted
            if len(batch) < max_batch_size and width * (len(batch) + 1) <= batch_tokens:
                batch.append(i)
                continue
        batches.append([i])
    return batches


class Batcher:
    """`encode(list of payloads) -> float32 [n, D]` runs on one thread; submit() is called from the loop."""

    def __init__(self, encode: Callable[[list], np.ndarray], dim: int, *, batch_tokens: int = 16384,
                 max_batch_size: int = 256, max_queue: int = 8192, wait_s: float = 0.0,
                 metrics: Metrics | None = None):
        self.encode, self.dim = encode, dim
        self.batch_tokens, self.max_batch_size = batch_tokens, max_batch_size
        self.max_queue, self.wait_s, self.metrics = max_queue, wait_s, metrics
        self.round_size = 4 * max_batch_size
        self._pending: deque[_Item] = deque()
        self._outstanding = 0  # inputs queued or being encoded
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ---- life cycle ----------------------------------------------------------------------------------------
    def start(self) -> Batcher:
        self._thread = threading.Thread(target=self._run, name="poolattn-batcher", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float | None = None) -> None:
        """Finish everything queued, then stop the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def outstanding(self) -> int:
        return self._outstanding

    # ---- the request side ----------------------------------------------------------------------------------
    def submit(self, inputs: list, lengths: list[int]) -> asyncio.Future:
        """Queue one request's inputs (payloads for encode() and their token counts); the future gives float32
        [len(inputs), D] in input order."""
        loop = asyncio.get_running_loop()
        job = _Job(loop.create_future(), loop, np.empty((len(inputs), self.dim), np.float32), len(inputs))
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if self._outstanding + len(inputs) > self.max_queue:
                raise QueueFull(f"the queue is full ({self._outstanding} inputs waiting, room for "
                                f"{self.max_queue}); retry later")
            self._outstanding += len(inputs)
            self._pending.extend(_Item(job, i, x, n) for i, (x, n) in enumerate(zip(inputs, lengths)))
            self._set_depth()
            self._cond.notify()
        return job.future

    # ---- the worker ----------------------------------------------------------------------------------------
    def _set_depth(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.set(self._outstanding)

    def _take_round(self) -> list[_Item] | None:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if not self._pending:
                return None  # stopping, nothing left
            if self.wait_s > 0 and not self._stopping:  # let a batch fill up, within the budget and the wait
                deadline = self._pending[0].enqueued + self.wait_s
                while (not self._stopping and len(self._pending) < self.max_batch_size
                       and (left := deadline - time.perf_counter()) > 0):
                    self._cond.wait(left)
            # Whole requests: a request cut at the round's edge would wait for the next round too (the tail of the
            # latency at 50 clients); one larger than a round is still taken in round-sized parts.
            items = [self._pending.popleft() for _ in range(min(len(self._pending), self.round_size))]
            while self._pending and self._pending[0].job is items[-1].job:
                items.append(self._pending.popleft())
            return items

    def _finish(self, n: int) -> None:
        with self._cond:
            self._outstanding -= n
            self._set_depth()

    def _run(self) -> None:
        while (items := self._take_round()) is not None:
            live = [it for it in items if not it.job.cancelled]
            if len(live) < len(items):
                self._finish(len(items) - len(live))
            for batch in plan_batches([it.length for it in live], self.batch_tokens, self.max_batch_size):
                self._encode_batch([live[i] for i in batch])

    def _encode_batch(self, items: list[_Item]) -> None:
        batch = [it for it in items if not it.job.cancelled]
        started = time.perf_counter()
        try:
            if batch:
                vectors = self.encode([it.payload for it in batch])
                if self.metrics:
                    self.metrics.observe_batch(batch=len(batch), padded=len(batch) * max(it.length for it in batch),
                                               tokens=sum(it.length for it in batch),
                                               queue_s=[started - it.enqueued for it in batch],
                                               seconds=time.perf_counter() - started)
                for it, vec in zip(batch, vectors):
                    it.job.result[it.index] = vec
                    it.job.remaining -= 1
                    if it.job.remaining == 0:
                        it.job.resolve(it.job.result)
        except Exception as err:  # a failed batch fails its requests, never the worker
            log.exception("encoding a batch of %d inputs failed", len(batch))
            for job in {id(it.job): it.job for it in batch}.values():
                job.resolve(err)
        finally:
            self._finish(len(items))
