"""Reading a stream source: NATS JetStream, through a durable pull consumer (the ``nats``
extra: ``pip install 'shipway[nats]'``).

Each message holds one JSON record or a JSON list of records. Messages are fetched a batch at a
time; the batch is claimed in the transaction that moves the source's cursor to the last
message's stream sequence, and the messages are acknowledged only after that, so a process
killed before the claim has its messages redelivered, and one killed after it has its claim
taken up from the batch's snapshot while the redelivered messages (at or below the cursor) are
acknowledged without being taken again.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import orjson

from shipway.errors import InputError
from shipway.manifest import SourceSpec


@dataclass
class Fetched:
    """One fetch: the records of messages past the cursor, messages that were not JSON
    records (with their stream sequence and the reason), and the last sequence seen."""

    records: list[dict[str, Any]]
    unreadable: list[tuple[int, str, str]]
    last: int
    messages: list[Any]


class StreamReader:
    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self.nc: Any = None
        self.sub: Any = None

    async def open(self) -> None:
        try:
            import nats
            from nats.js import api
        except ImportError:
            raise InputError(
                f"source {self.spec.name} is a NATS JetStream stream, which needs the nats "
                "extra: pip install 'shipway[nats]'"
            ) from None
        try:
            url = self.spec.source_url()
        except ValueError as exc:
            raise InputError(str(exc)) from None
        durable = self.spec.durable or f"shipway-{self.spec.name}"
        try:
            self.nc = await nats.connect(
                url, connect_timeout=5, max_reconnect_attempts=0, allow_reconnect=False
            )
            js = self.nc.jetstream()
            config = api.ConsumerConfig(
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=self.spec.ack_wait.seconds,
                deliver_policy=api.DeliverPolicy.ALL,
            )
            self.sub = await js.pull_subscribe(
                self.spec.subject or "", durable=durable, stream=self.spec.stream, config=config
            )
        except Exception as exc:
            await self.close()
            raise InputError(
                f"source {self.spec.name}: cannot read {self.spec.subject!r} from the stream: "
                f"{type(exc).__name__}: {exc}"
            ) from None

    async def close(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):  # a broken connection: nothing to keep
                await self.nc.close()
            self.nc = None

    async def fetch(self, after: int) -> Fetched | None:
        """Up to ``fetch_rows`` messages; None when none is waiting. Messages at or below
        ``after`` (the cursor) were claimed before: they are acknowledged and skipped."""
        import nats.errors

        try:
            msgs = await self.sub.fetch(self.spec.fetch_rows, timeout=1.0)
        except nats.errors.TimeoutError:
            return None
        records: list[dict[str, Any]] = []
        unreadable: list[tuple[int, str, str]] = []
        fresh, last = [], after
        for m in msgs:
            seq = int(m.metadata.sequence.stream)
            if seq <= after:
                await m.ack()  # claimed by an earlier run (its claim holds the rows)
                continue
            fresh.append(m)
            last = max(last, seq)
            try:
                value = orjson.loads(m.data)
            except orjson.JSONDecodeError as exc:
                unreadable.append((seq, m.data[:2000].decode(errors="replace"), str(exc)))
                continue
            rows = value if isinstance(value, list) else [value]
            if not all(isinstance(r, dict) for r in rows):
                unreadable.append(
                    (seq, m.data[:2000].decode(errors="replace"), "not a JSON object or list")
                )
                continue
            records.extend(rows)
        return Fetched(records, unreadable, last, fresh)

    @staticmethod
    async def ack(messages: list[Any]) -> None:
        for m in messages:
            await m.ack()


__all__ = ["Fetched", "StreamReader"]
