"""One suite for every ThreadStore backend (memory, Redis), plus backend-specific checks."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Callable

import pytest

from chatkit.thread_memory import MemoryThreadStore
from chatkit.thread_redis import RedisThreadStore
from chatkit.threads import (
    Event,
    Message,
    Subscription,
    SubscriptionClosed,
    ThreadFull,
    ThreadNotFound,
    ThreadStore,
    ThreadStoreUnavailable,
    follow,
    is_thread_id,
)
from tests.conftest import FakeClock

WAIT = 5.0  # upper bound on any wait for an event that should arrive at once
# A Redis read block far longer than WAIT (see with_long_block).
LONG_BLOCK = 30.0

MakeStore = Callable[..., ThreadStore]


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> MakeStore:
    """A store factory; the Redis variant asks for Redis only when it is the one tested."""
    if request.param == "memory":
        return MemoryThreadStore
    url = request.getfixturevalue("redis_url")
    # A short XREAD block keeps the tests quick; a fresh prefix keeps runs apart.
    return functools.partial(
        RedisThreadStore, url, prefix=f"test:{uuid.uuid4().hex}:", block=0.2
    )


@pytest.fixture
def redis_store(redis_url: str) -> Callable[..., RedisThreadStore]:
    return functools.partial(RedisThreadStore, redis_url, block=0.2)


async def collect(subscription: Subscription, count: int) -> list[Event]:
    events: list[Event] = []
    while len(events) < count:
        event = await subscription.get(timeout=WAIT)
        assert event is not None, f"timed out after {len(events)} of {count} events"
        events.append(event)
    return events


@pytest.mark.gen_test(timeout=15)
async def test_thread_is_visible_to_its_owner_only(make_store: MakeStore) -> None:
    store = make_store()
    try:
        thread_id = await store.create_thread("alice")
        assert is_thread_id(thread_id)
        thread = await store.get_thread(thread_id, "alice")
        assert thread is not None
        assert (thread.id, thread.owner, thread.messages) == (thread_id, "alice", [])
        assert await store.get_thread(thread_id, "bob") is None
        with pytest.raises(ThreadNotFound):
            await store.add_message(thread_id, "bob", "user", "hi")
        assert (await store.get_thread(thread_id, "alice")).messages == []  # type: ignore[union-attr]
    finally:
        await store.close()


@pytest.mark.parametrize(
    "thread_id", ["thr_doesnotexist", "", "thr_", "thr_{x}", "thr_a/b", "x" * 500, "thr_\ud800"]
)
@pytest.mark.gen_test(timeout=15)
async def test_unknown_or_malformed_thread_is_absent(make_store: MakeStore, thread_id: str) -> None:
    store = make_store()
    try:
        assert await store.get_thread(thread_id, "alice") is None
        assert await store.events_after(thread_id, 0) == []
        with pytest.raises(ThreadNotFound):
            await store.add_message(thread_id, "alice", "user", "hi")
        with pytest.raises(ThreadNotFound):
            await store.append_event(thread_id, "delta", {"text": "x"})
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=15)
async def test_thread_ids_are_random_and_distinct(make_store: MakeStore) -> None:
    store = make_store()
    try:
        ids = {await store.create_thread("alice") for _ in range(20)}
        assert len(ids) == 20
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=15)
async def test_messages_are_kept_in_order_and_published(make_store: MakeStore) -> None:
    store = make_store()
    try:
        thread_id = await store.create_thread("alice")
        question = await store.add_message(thread_id, "alice", "user", "héllo\nthere")
        answer = await store.add_message(thread_id, "alice", "assistant", "hi back")
        assert question.id != answer.id

        thread = await store.get_thread(thread_id, "alice")
        assert thread is not None
        assert thread.messages == [
            Message(question.id, "user", "héllo\nthere"),
            Message(answer.id, "assistant", "hi back"),
        ]
        events = await store.events_after(thread_id, 0)
        assert [(e.id, e.kind) for e in events] == [(1, "message"), (2, "message")]
        assert events[0].data == {"id": question.id, "role": "user", "text": "héllo\nthere"}
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=15)
async def test_add_message_refuses_a_message_past_its_limit(make_store: MakeStore) -> None:
    store = make_store()
    try:
        thread_id = await store.create_thread("alice")
        for n in range(3):
            await store.add_message(thread_id, "alice", "user", f"m{n}", limit=3)
        with pytest.raises(ThreadFull) as full:
            await store.add_message(thread_id, "alice", "user", "one more", limit=3)
        assert (full.value.status_code, full.value.error) == (400, "invalid_request")
        # Refused means neither stored nor published.
        assert [e.id for e in await store.events_after(thread_id, 0)] == [1, 2, 3]
        # Ownership is checked first: another owner learns nothing, not even "full".
        with pytest.raises(ThreadNotFound):
            await store.add_message(thread_id, "bob", "user", "x", limit=3)
        # Without a limit (a reply already under way) a message still lands.
        await store.add_message(thread_id, "alice", "assistant", "reply")
        thread = await store.get_thread(thread_id, "alice")
        assert thread is not None
        assert [m.text for m in thread.messages] == ["m0", "m1", "m2", "reply"]
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=15)
async def test_rejects_text_that_cannot_be_stored(make_store: MakeStore) -> None:
    store = make_store()
    try:
        thread_id = await store.create_thread("alice")
        with pytest.raises(ValueError, match="Unicode"):
            await store.add_message(thread_id, "alice", "user", "lone \ud800 surrogate")
        with pytest.raises(ValueError, match="role"):
            await store.add_message(thread_id, "alice", "tool", "x")  # type: ignore[arg-type]
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["", "Delta", "a\nb", "event: x", "x" * 33])
@pytest.mark.gen_test(timeout=15)
async def test_rejects_event_kinds_unfit_for_sse(make_store: MakeStore, kind: str) -> None:
    store = make_store()
    try:
        thread_id = await store.create_thread("alice")
        with pytest.raises(ValueError, match="kind"):
            await store.append_event(thread_id, kind, {})
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=15)
async def test_event_ids_increase_by_one_from_one_per_thread(make_store: MakeStore) -> None:
    store = make_store()
    try:
        first = await store.create_thread("alice")
        second = await store.create_thread("alice")
        ids = [await store.append_event(first, "delta", {"n": n}) for n in range(5)]
        assert ids == [1, 2, 3, 4, 5]
        assert await store.append_event(second, "delta", {}) == 1
        events = await store.events_after(first, 0)
        assert [e.data for e in events] == [{"n": n} for n in range(5)]
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=15)
async def test_history_is_bounded_and_replayed_after_last_id(make_store: MakeStore) -> None:
    store = make_store(history=5)
    try:
        thread_id = await store.create_thread("alice")
        for n in range(12):
            await store.append_event(thread_id, "delta", {"n": n})
        assert [e.id for e in await store.events_after(thread_id, 0)] == [8, 9, 10, 11, 12]
        assert [e.id for e in await store.events_after(thread_id, 10)] == [11, 12]
        assert await store.events_after(thread_id, 12) == []
        assert await store.events_after(thread_id, 2**63 - 1) == []
        assert await store.events_after(thread_id, None) == []  # live tail: nothing replayed
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=15)
async def test_subscriber_receives_new_events_in_order(make_store: MakeStore) -> None:
    store = make_store()
    try:
        thread_id = await store.create_thread("alice")
        await store.append_event(thread_id, "delta", {"old": True})
        async with await store.subscribe(thread_id) as subscription:
            for n in range(3):
                await store.append_event(thread_id, "delta", {"n": n})
            events = await collect(subscription, 3)
            assert [(e.id, e.data) for e in events] == [(2, {"n": 0}), (3, {"n": 1}), (4, {"n": 2})]
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=15)
async def test_follow_replays_then_goes_live_without_gap_or_duplicate(
    make_store: MakeStore,
) -> None:
    store = make_store()
    try:
        thread_id = await store.create_thread("alice")
        for n in range(3):
            await store.append_event(thread_id, "delta", {"n": n})

        # An event appended between subscribing and replaying is in both; it must be
        # delivered once.
        subscription = await store.subscribe(thread_id)
        await store.append_event(thread_id, "delta", {"n": 3})
        subscription.queue_replay(await store.events_after(thread_id, 1))
        await store.append_event(thread_id, "delta", {"n": 4})
        events = await collect(subscription, 4)
        assert [e.id for e in events] == [2, 3, 4, 5]
        assert await subscription.get(timeout=0.3) is None
        await subscription.aclose()
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=15)
async def test_follow_is_race_free_with_a_concurrent_writer(make_store: MakeStore) -> None:
    store = make_store()
    try:
        thread_id = await store.create_thread("alice")
        total = 60
        midway = asyncio.Event()

        async def write() -> None:
            for n in range(total):
                await store.append_event(thread_id, "delta", {"n": n})
                if n == 10:
                    midway.set()
                await asyncio.sleep(0)

        writer = asyncio.ensure_future(write())
        await asyncio.wait_for(midway.wait(), WAIT)
        async with await follow(store, thread_id, 0) as subscription:
            events = await collect(subscription, total)
        await writer
        assert [e.id for e in events] == list(range(1, total + 1))
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=15)
async def test_follow_from_live_tail_skips_history(make_store: MakeStore) -> None:
    store = make_store()
    try:
        thread_id = await store.create_thread("alice")
        await store.append_event(thread_id, "delta", {"n": 0})
        async with await follow(store, thread_id, None) as subscription:
            await store.append_event(thread_id, "done", {"n": 1})
            (event,) = await collect(subscription, 1)
        assert (event.id, event.kind) == (2, "done")
    finally:
        await store.close()


def with_long_block(make_store: MakeStore) -> ThreadStore:
    """A store whose Redis reads block for longer than any bound below (memory: as is).

    An answer within such a bound then comes from the call's own timeout or from a close,
    never from the end of a block, however slow the machine.
    """
    return make_store() if isinstance(make_store, type) else make_store(block=LONG_BLOCK)


@pytest.mark.gen_test(timeout=15)
async def test_get_times_out_with_none(make_store: MakeStore) -> None:
    store = with_long_block(make_store)
    try:
        thread_id = await store.create_thread("alice")
        async with await store.subscribe(thread_id) as subscription:
            assert await asyncio.wait_for(subscription.get(timeout=0.05), WAIT) is None
            # A read left pending by the timeout still delivers the next event.
            await store.append_event(thread_id, "delta", {})
            assert (await collect(subscription, 1))[0].id == 1
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=15)
async def test_close_wakes_a_pending_get_at_once(make_store: MakeStore) -> None:
    # A block and a timeout longer than the test's bound: closing must not wait for either.
    store = with_long_block(make_store)
    try:
        thread_id = await store.create_thread("alice")
        subscription = await store.subscribe(thread_id)
        pending = asyncio.ensure_future(subscription.get(timeout=LONG_BLOCK))
        await asyncio.sleep(0.05)
        subscription.close()
        with pytest.raises(SubscriptionClosed):
            await asyncio.wait_for(pending, WAIT)
        await asyncio.wait_for(subscription.aclose(), WAIT)
        assert subscription.closed
        assert [event async for event in subscription] == []
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=15)
async def test_store_close_ends_open_subscriptions(make_store: MakeStore) -> None:
    store = with_long_block(make_store)
    thread_id = await store.create_thread("alice")
    subscription = await store.subscribe(thread_id)
    pending = asyncio.ensure_future(subscription.get())
    await asyncio.sleep(0.05)
    await asyncio.wait_for(store.close(), WAIT)
    with pytest.raises(SubscriptionClosed):
        await asyncio.wait_for(pending, WAIT)


# Memory backend


@pytest.mark.gen_test(timeout=15)
async def test_memory_slow_subscriber_is_closed_not_grown() -> None:
    store = MemoryThreadStore(queue_size=4)
    try:
        thread_id = await store.create_thread("alice")
        slow = await store.subscribe(thread_id)
        fast = await store.subscribe(thread_id)
        for n in range(3):
            await store.append_event(thread_id, "delta", {"n": n})
        assert len(await collect(fast, 3)) == 3
        for n in range(3, 6):
            await store.append_event(thread_id, "delta", {"n": n})
        assert slow.closed
        with pytest.raises(SubscriptionClosed):
            await slow.get(timeout=0)
        assert [e.id for e in await collect(fast, 3)] == [4, 5, 6]
        # The closed subscriber's events are still there to replay.
        assert len(await store.events_after(thread_id, 0)) == 6
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=15)
async def test_memory_threads_expire_after_ttl_without_writes(clock: FakeClock) -> None:
    store = MemoryThreadStore(ttl=100, clock=clock)
    try:
        idle = await store.create_thread("alice")
        busy = await store.create_thread("alice")
        clock.advance(60)
        await store.append_event(busy, "delta", {})
        clock.advance(60)
        assert await store.get_thread(idle, "alice") is None
        assert await store.get_thread(busy, "alice") is not None
        clock.advance(100)
        assert await store.get_thread(busy, "alice") is None
    finally:
        await store.close()


# Redis backend


@pytest.mark.gen_test(timeout=15)
async def test_redis_delivers_across_store_instances(
    redis_store: Callable[..., RedisThreadStore],
) -> None:
    writer, reader = redis_store(), redis_store()
    try:
        thread_id = await writer.create_thread("alice")
        async with await follow(reader, thread_id, None) as subscription:
            message = await writer.add_message(thread_id, "alice", "user", "from afar")
            (event,) = await collect(subscription, 1)
        assert (event.kind, event.data["id"]) == ("message", message.id)
        thread = await reader.get_thread(thread_id, "alice")
        assert thread is not None
        assert thread.messages == [message]
    finally:
        await writer.close()
        await reader.close()


@pytest.mark.gen_test(timeout=15)
async def test_redis_keys_use_prefix_and_expire(
    redis_store: Callable[..., RedisThreadStore],
) -> None:
    store = redis_store(prefix="custom:", ttl=1234)
    try:
        thread_id = await store.create_thread("alice")
        await store.add_message(thread_id, "alice", "user", "hi")
        keys = sorted(await store._redis.keys("*"))
        assert keys == sorted(
            f"custom:{{{thread_id}}}:{part}" for part in ("events", "messages", "meta", "order")
        )
        for key in keys:
            assert 1200 <= await store._redis.ttl(key) <= 1234
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=15)
async def test_redis_skips_foreign_entries_in_the_stream(
    redis_store: Callable[..., RedisThreadStore],
) -> None:
    store = redis_store()
    try:
        thread_id = await store.create_thread("alice")
        await store.append_event(thread_id, "delta", {"n": 1})
        key = store._key(thread_id, "events")
        await store._redis.xadd(key, {"kind": "delta", "data": "not json"}, id="2-0")
        await store._redis.hset(store._key(thread_id, "meta"), "last_event_id", 2)
        await store.append_event(thread_id, "delta", {"n": 3})
        assert [e.id for e in await store.events_after(thread_id, 0)] == [1, 3]
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=15)
async def test_redis_unreachable_is_store_unavailable() -> None:
    store = RedisThreadStore("redis://127.0.0.1:9/0")
    try:
        with pytest.raises(ThreadStoreUnavailable) as caught:
            await store.create_thread("alice")
        assert caught.value.status_code == 503
    finally:
        await store.close()


@pytest.mark.parametrize("command_timeout", [0, -1, 61])
def test_redis_command_timeout_must_be_bounded(command_timeout: float) -> None:
    with pytest.raises(ValueError, match="command_timeout"):
        RedisThreadStore("redis://127.0.0.1:9/0", command_timeout=command_timeout)


@pytest.mark.gen_test(timeout=15)
async def test_repr_holds_no_url_or_password() -> None:
    store = RedisThreadStore("redis://:hunter2@127.0.0.1:9/0")
    try:
        assert "hunter2" not in repr(store)
    finally:
        await store.close()
