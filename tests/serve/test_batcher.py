"""The micro-batcher on its own: batches by size and by wait, admission by queued work, draining."""

import asyncio

import pytest

from recfunnel.serve.batcher import Batcher, Overloaded, Stopped


def finished(results):
    future = asyncio.get_running_loop().create_future()
    future.set_result(results)
    return future


def test_requests_arriving_together_share_a_batch_up_to_max_batch():
    seen = []

    def call(requests):
        seen.append(list(requests))
        return finished([r * 10 for r in requests])

    async def run():
        batcher = Batcher(call, max_batch=3, max_wait_ms=20)
        return await asyncio.gather(*(batcher.submit(i) for i in range(7)))

    answers = asyncio.run(run())
    assert [result for result, _ in answers] == [i * 10 for i in range(7)]
    assert seen == [[0, 1, 2], [3, 4, 5], [6]]
    assert all(queued >= 0 for _, queued in answers)


def test_a_lone_request_waits_at_most_max_wait():
    async def run():
        batcher = Batcher(lambda requests: finished(requests), max_batch=8, max_wait_ms=5)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await batcher.submit("x")
        return loop.time() - start

    assert asyncio.run(run()) < 0.5  # not held until the batch fills


def test_one_batch_is_out_at_a_time_and_the_next_gathers_meanwhile():
    """An engine in another process: the batch's future resolves later; requests that arrive
    meanwhile go in the next batch, together."""
    seen = []

    async def run():
        loop = asyncio.get_running_loop()

        def call(requests):
            seen.append(list(requests))
            future = loop.create_future()
            loop.call_later(0.05, future.set_result, list(requests))
            return future

        batcher = Batcher(call, max_batch=8, max_wait_ms=1, gap_s=0)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)  # the first batch is out
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 5)]
        return await asyncio.gather(first, *rest)

    answers = asyncio.run(run())
    assert [r for r, _ in answers] == [0, 1, 2, 3, 4]
    assert seen == [[0], [1, 2, 3, 4]]


def test_an_exception_for_one_request_reaches_that_request_alone():
    def call(requests):
        return finished([ValueError(r) if r == "bad" else r for r in requests])

    async def run():
        batcher = Batcher(call, max_batch=4, max_wait_ms=5)
        return await asyncio.gather(*(batcher.submit(r) for r in ("a", "bad", "b")), return_exceptions=True)

    a, bad, b = asyncio.run(run())
    assert a[0] == "a" and b[0] == "b" and isinstance(bad, ValueError)


def test_requests_beyond_the_queued_work_bound_are_refused_at_once():
    """Each request costs ~10 ms here; with at most 25 ms of queued work, the third waiting one
    would be late: refused, with a Retry-After of at least a second."""

    async def run():
        loop = asyncio.get_running_loop()

        def call(requests):
            future = loop.create_future()
            loop.call_later(0.01 * len(requests), future.set_result, list(requests))
            return future

        batcher = Batcher(call, max_batch=1, max_wait_ms=0, max_queue_ms=25, gap_s=0)
        await batcher.submit("warm")  # learns the cost per request
        outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(6)), return_exceptions=True)
        return batcher, outcomes

    batcher, outcomes = asyncio.run(run())
    refused = [o for o in outcomes if isinstance(o, Overloaded)]
    assert 1 <= len([o for o in outcomes if not isinstance(o, Exception)]) <= 3 and len(refused) >= 3
    assert all(o.retry_after >= 1 for o in refused) and "overloaded" in str(refused[0])
    assert batcher.stats.refused_on_arrival == len(refused)


def test_max_queue_bounds_the_waiting_requests():
    async def run():
        batcher = Batcher(lambda requests: finished(requests), max_batch=100, max_wait_ms=50, max_queue=3)
        return await asyncio.gather(*(batcher.submit(i) for i in range(5)), return_exceptions=True)

    outcomes = asyncio.run(run())
    assert [isinstance(o, Overloaded) for o in outcomes] == [False, False, False, True, True]


def test_a_stopped_batcher_refuses_new_requests_and_answers_those_queued():
    async def run():
        batcher = Batcher(lambda requests: finished(requests), max_batch=8, max_wait_ms=20)
        queued = asyncio.ensure_future(batcher.submit("queued"))
        await asyncio.sleep(0)
        batcher.stop()
        with pytest.raises(Stopped):
            await batcher.submit("late")
        return await queued, batcher.stats.refused_stopping

    (result, _), refused = asyncio.run(run())
    assert result == "queued" and refused == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [({"max_batch": 0}, "max_batch"), ({"max_queue": 1.5}, "max_queue"), ({"max_wait_ms": -1}, "max_wait_ms")],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Batcher(lambda requests: None, **kwargs)
