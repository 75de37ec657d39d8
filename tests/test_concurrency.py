"""The batching worker behind the model runner and the decision log."""

from __future__ import annotations

import asyncio

import pytest

from shipway.concurrency import BatchWorker


def test_concurrent_items_are_batched_and_answered_in_order() -> None:
    seen: list[int] = []

    def handle(items: list[int]) -> list[int]:
        seen.append(len(items))
        return [i * 10 for i in items]

    w: BatchWorker[int, int] = BatchWorker(handle, name="t", max_items=50)
    w.start()

    async def main() -> list[int]:
        return await asyncio.gather(*(w.submit(i) for i in range(200)))

    try:
        assert asyncio.run(main()) == [i * 10 for i in range(200)]
    finally:
        w.stop()
    assert sum(seen) == 200
    assert max(seen) <= 50
    assert len(seen) < 200  # some items shared a call


def test_one_bad_item_fails_only_its_caller() -> None:
    def handle(items: list[int]) -> list[int]:
        if 13 in items:
            raise ValueError("unlucky")
        return items

    w: BatchWorker[int, int] = BatchWorker(handle, name="t", max_items=100)
    w.start()

    async def main() -> list[object]:
        return await asyncio.gather(*(w.submit(i) for i in range(30)), return_exceptions=True)

    try:
        results = asyncio.run(main())
    finally:
        w.stop()
    assert isinstance(results[13], ValueError)
    assert [r for i, r in enumerate(results) if i != 13] == [i for i in range(30) if i != 13]


def test_weights_bound_a_batch_and_sync_calls_work() -> None:
    sizes: list[int] = []

    def handle(items: list[list[int]]) -> list[int]:
        sizes.append(sum(map(len, items)))
        return [len(i) for i in items]

    w: BatchWorker[list[int], int] = BatchWorker(handle, name="t", max_items=10, weight=len)
    w.start()

    async def main() -> list[int]:
        return await asyncio.gather(*(w.submit([0] * 4) for _ in range(20)))

    try:
        assert asyncio.run(main()) == [4] * 20
        assert w.call([1, 2, 3]) == 3
    finally:
        w.stop()
    assert max(sizes) <= 10
    with pytest.raises(RuntimeError):
        asyncio.run(_submit_after_stop(w))


async def _submit_after_stop(w: BatchWorker) -> None:
    await w.submit([1])
