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


def test_a_full_batch_follows_the_one_out_and_no_more():
    """With the funnel busy, a second batch goes out behind the first when it is full, so that the
    funnel has it at hand; a third waits for the first to end."""
    seen, out_at_once = [], []

    async def run():
        loop = asyncio.get_running_loop()
        pending = []

        def call(requests):
            seen.append(list(requests))
            future = loop.create_future()
            pending.append(future)
            out_at_once.append(sum(not f.done() for f in pending))
            loop.call_later(0.03, future.set_result, list(requests))
            return future

        batcher = Batcher(call, max_batch=2, max_wait_ms=1, gap_s=0)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)  # the first batch is out
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 6)]
        return await asyncio.gather(first, *rest)

    answers = asyncio.run(run())
    assert [r for r, _ in answers] == [0, 1, 2, 3, 4, 5]
    assert seen == [[0], [1, 2], [3, 4], [5]] and max(out_at_once) == 2


def test_an_exception_for_one_request_reaches_that_request_alone():
    def call(requests):
        return finished([ValueError(r) if r == "bad" else r for r in requests])

    async def run():
        batcher = Batcher(call, max_batch=4, max_wait_ms=5)
        return await asyncio.gather(*(batcher.submit(r) for r in ("a", "bad", "b")), return_exceptions=True)

    a, bad, b = asyncio.run(run())
    assert a[0] == "a" and b[0] == "b" and isinstance(bad, ValueError)


def slow_call(loop, seconds_per_request):
    def call(requests):
        future = loop.create_future()
        loop.call_later(seconds_per_request * len(requests), future.set_result, list(requests))
        return future

    return call


def test_a_burst_is_admitted_up_to_the_hard_bound_and_the_rest_refused_at_once():
    """10 ms per request, a 22 ms bound: waits of 0, 10 and 20 ms are admitted; 30 ms is over the
    bound but under 1.6x it, and the wait has only just gone over: a burst, admitted; 40 ms is not."""

    async def run():
        batcher = Batcher(slow_call(asyncio.get_running_loop(), 0.01), max_batch=1, max_wait_ms=0, max_queue_ms=22)
        await batcher.submit("warm")  # learns what a batch takes
        outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(6)), return_exceptions=True)
        return batcher, outcomes

    batcher, outcomes = asyncio.run(run())
    assert [isinstance(o, Overloaded) for o in outcomes] == [False] * 4 + [True] * 2
    assert all(o.retry_after >= 1 for o in outcomes[4:]) and "overloaded" in str(outcomes[4])
    assert batcher.stats.refused_on_arrival == 2


def test_a_standing_queue_is_held_to_the_bound():
    """50 ms per request, a 110 ms bound: once the wait has been over the bound for the grace
    (50 ms), a request that a burst would have been allowed (150 ms < 1.6 x 110) is refused."""

    async def run():
        batcher = Batcher(slow_call(asyncio.get_running_loop(), 0.05), max_batch=1, max_wait_ms=0, max_queue_ms=110)
        await batcher.submit("warm")
        first = [asyncio.ensure_future(batcher.submit(i)) for i in range(4)]  # waits 0, 50, 100, 150 (burst)
        await asyncio.sleep(0.07)  # still 150 ms of work ahead of a newcomer, for longer than the grace
        try:
            await batcher.submit("late")
        except Overloaded:
            refused = True
        else:
            refused = False
        return refused, await asyncio.gather(*first)

    refused, first = asyncio.run(run())
    assert refused and [r for r, _ in first] == [0, 1, 2, 3]


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
