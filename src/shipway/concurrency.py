"""One background thread that serves many callers in batches.

Callers on the event loop ``await worker.submit(item)``. Items are gathered on the loop's side
and handed to the thread as one batch: the thread wakes once per batch (not once per item),
handles it in one call, and wakes all its callers with a single hop back to their loop. That
matters more than it seems: every wake-up of a thread that needs the GIL while the event loop
holds it is a context switch and a wait, so handing over a batch at a time keeps the two
threads from trading the GIL on every request.

When is a batch handed over? At once when it holds as many items as the previous batch (as many
callers as were waiting last time are likely on their way back) or ``max_items`` of weight; a
lone item goes at the end of the current turn of the event loop (so callers that arrived in the
same turn join it); with ``max_wait_s`` a batch smaller than the previous one also waits up to
that long for the rest. If the thread is busy, batches queue up and the thread takes as many as
fit in one call. The decision log (group commit) and the model runner both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

#: This process as the owner of work recorded in the store (a source run, a retrain job).
OWNER = f"{socket.gethostname()}:{os.getpid()}"


def local_owner_alive(owner: str) -> bool | None:
    """Whether the process ``owner`` (``host:pid``) names is alive, when it is on this host;
    None when it is on another host (or not a host:pid), where only its beats can tell."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


T = TypeVar("T")
R = TypeVar("R")

_STOP = object()
#: One waiting caller: the item, its future (or a thread's (event, box)), and its loop.
_Entry = tuple[Any, Any, Any]


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
        # the batch being gathered on the event loop's side (touched by that loop only)
        self._pending: list[_Entry] = []
        self._pending_weight = 0
        self._flush_handle: asyncio.Handle | asyncio.TimerHandle | None = None
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
        w = self._weight(item) if self._weight else 1
        pending = self._pending
        if pending and (self._pending_weight + w > self._max or pending[0][2] is not loop):
            self._flush()
            pending = self._pending
        pending.append((item, fut, loop))
        self._pending_weight += w
        if self._pending_weight >= self._max or len(pending) >= self._last_size:
            self._flush()
        elif self._flush_handle is None:
            if self._max_wait > 0 and self._last_size > 1:
                self._flush_handle = loop.call_later(self._max_wait, self._flush)
            else:
                self._flush_handle = loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        """Hand the gathered batch to the thread (on the loop that gathered it)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        batch, self._pending, self._pending_weight = self._pending, [], 0
        if batch:
            self._q.put(batch)

    def call(self, item: T) -> R:
        """Handle one item synchronously from a thread that has no event loop."""
        done = threading.Event()
        box: list[Any] = []
        self._q.put([(item, (done, box), None)])
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        result: R = box[0]
        return result

    def stop(self, timeout: float = 30.0) -> None:
        """Finish everything queued or gathered, then end the thread."""
        if not self._started or self._stopped:
            self._stopped = True
            return
        self._stopped = True
        self._flush()
        self._q.put(_STOP)
        self._thread.join(timeout)

    # -- the thread ----------------------------------------------------------------------

    def _weight_of(self, batch: list[_Entry]) -> int:
        w = self._weight
        return sum(w(e[0]) for e in batch) if w else len(batch)

    def _run(self) -> None:
        pending: Any = None
        while True:
            first = pending if pending is not None else self._q.get()
            pending = None
            if first is _STOP:
                return
            batch: list[_Entry] = list(first)
            used = self._weight_of(batch)
            stop_after = False
            while used < self._max:  # batches that queued up while the thread was busy
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop_after = True
                    break
                w = self._weight_of(nxt)
                if used + w > self._max:
                    pending = nxt
                    break
                batch.extend(nxt)
                used += w
            self._last_size = len(batch)
            self._process(batch)
            if stop_after:
                # whatever raced in behind the stop marker is still answered
                rest: list[_Entry] = []
                while True:
                    try:
                        nxt = self._q.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is not _STOP:
                        rest.extend(nxt)
                if rest:
                    self._process(rest)
                return

    def _process(self, batch: list[_Entry]) -> None:
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
