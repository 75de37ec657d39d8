"""One background thread that serves many callers in batches.

Callers on the event loop ``await worker.submit(item)``; the thread takes everything queued so
far (up to ``max_items``), handles it in one call, and wakes all those callers with a single
hop back to their loop. Under load batches grow by themselves; when idle a lone item goes
through at once. With ``max_wait_s`` the thread also waits up to that long for more items, but
only while requests arrive together and only until the batch is as large as the previous one
(as many callers as were waiting last time are likely on their way back), so a lone request
never waits and a full batch never idles. The decision log (group commit) and the model
runner both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_STOP = object()


def _settle(pairs: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, result, exc in pairs:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


class BatchWorker(Generic[T, R]):
    """Runs ``handle(items) -> results`` (one result per item) on a dedicated thread.

    ``weight(item)`` says how much of ``max_items`` an item uses (rows in a request, say).
    If a batch of several items fails, each item is retried alone so that one bad item fails
    only its own caller.
    """

    def __init__(
        self,
        handle: Callable[[list[T]], Sequence[R]],
        *,
        name: str,
        max_items: int = 512,
        weight: Callable[[T], int] | None = None,
        max_wait_s: float = 0.0,
    ) -> None:
        self._handle = handle
        self._max = max_items
        self._max_wait = max_wait_s
        self._last_size = 1
        self._weight = weight
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False
        self._stopped = False
        self.batches = 0
        self.items = 0

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def submit(self, item: T) -> asyncio.Future[R]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        if self._stopped:
            fut.set_exception(RuntimeError("worker is stopped"))
            return fut
        self._q.put((item, fut, loop))
        return fut

    def call(self, item: T) -> R:
        """Handle one item synchronously from a thread that has no event loop."""
        done = threading.Event()
        box: list[Any] = []
        self._q.put((item, (done, box), None))
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def stop(self, timeout: float = 30.0) -> None:
        """Finish everything queued, then end the thread."""
        if not self._started or self._stopped:
            self._stopped = True
            return
        self._stopped = True
        self._q.put(_STOP)
        self._thread.join(timeout)

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        pending: Any = None
        while True:
            first = pending if pending is not None else self._q.get()
            pending = None
            if first is _STOP:
                return
            batch = [first]
            used = self._weight(first[0]) if self._weight else 1
            stop_after = False
            deadline = None
            if self._max_wait > 0 and self._last_size > 1:
                deadline = time.monotonic() + self._max_wait
            while used < self._max:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    # wait only to reach the size of the previous batch: as many callers as
                    # were waiting last time are likely on their way back
                    if deadline is None or len(batch) >= self._last_size:
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        nxt = self._q.get(timeout=remaining)
                    except queue.Empty:
                        break
                if nxt is _STOP:
                    stop_after = True
                    break
                w = self._weight(nxt[0]) if self._weight else 1
                if used + w > self._max:
                    pending = nxt
                    break
                batch.append(nxt)
                used += w
            self._last_size = len(batch)
            self._process(batch)
            if stop_after:
                # drain whatever raced in behind the stop marker
                rest = []
                while True:
                    try:
                        rest.append(self._q.get_nowait())
                    except queue.Empty:
                        break
                rest = [r for r in rest if r is not _STOP]
                if rest:
                    self._process(rest)
                return

    def _process(self, batch: list[Any]) -> None:
        items = [b[0] for b in batch]
        self.batches += 1
        self.items += len(items)
        try:
            results = list(self._handle(items))
            if len(results) != len(items):
                raise RuntimeError(f"handler returned {len(results)} results for {len(items)}")
            outcome: list[tuple[Any, BaseException | None]] = [(r, None) for r in results]
        except BaseException as exc:
            if len(items) == 1:
                outcome = [(None, exc)]
            else:
                outcome = []
                for it in items:
                    try:
                        outcome.append((self._handle([it])[0], None))
                    except BaseException as one_exc:
                        outcome.append((None, one_exc))
        by_loop: dict[Any, list[tuple[asyncio.Future[Any], Any, BaseException | None]]] = {}
        for (_item, fut, loop), (res, err) in zip(batch, outcome, strict=True):
            if loop is None:
                done, box = fut
                box.append(err if err is not None else res)
                done.set()
                continue
            by_loop.setdefault(loop, []).append((fut, res, err))
        for loop, pairs in by_loop.items():
            # RuntimeError: the loop has closed; nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, pairs)


__all__ = ["BatchWorker"]
