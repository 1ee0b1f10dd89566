"""Reply tasks (chatkit/replies.py): the per-owner write rate, the per-owner reply limit, and
a reply loop that lets the thread's readers keep up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from chatkit.replies import ReplyTasks
from chatkit.thread_memory import DEFAULT_QUEUE_SIZE, MemoryThreadStore
from chatkit.threads import ThreadFull, owner_of
from tests.chatkit_support import eventually
from tokensvc import Claims, Secret, TooManyRequests

WAIT = 5.0


def claims(sub: str = "alice", client_id: str = "extension") -> Claims:
    return Claims(
        token_type="session", iss="tokensvc", aud="chatkit", sub=sub, client_id=client_id,
        skid="demo", sid="sid-1", jti="jti-1", iat=0.0, nbf=0.0, exp=0.0,
        scope=frozenset({"chatkit"}), session_exp=0.0, session_end=0.0,
    )


class GatedUpstream:
    """Replies with fixed deltas, each one only once ``gate`` is open."""

    def __init__(self, deltas: list[str]) -> None:
        self.deltas = deltas
        self.gate = asyncio.Event()
        self.gate.set()

    async def stream_reply(
        self, api_key: Secret, model: str, messages: list[dict[str, str]]
    ) -> AsyncGenerator[str, None]:
        for delta in self.deltas:
            await self.gate.wait()  # never suspends while the gate is open
            yield delta

    async def create_chatkit_session(
        self, api_key: Secret, workflow_id: str, user: str
    ) -> dict[str, Any]:
        raise NotImplementedError

    async def close(self) -> None:
        return None


# -- owners ----------------------------------------------------------------------------------


def test_owner_is_the_client_and_the_subject() -> None:
    assert owner_of(claims("alice", "extension")) == "extension:alice"
    assert owner_of(claims("alice", "extension")) != owner_of(claims("alice", "other"))
    # Client ids cannot hold ":", so no pair of client and subject reads as another.
    assert owner_of(claims("b:c", "a")) == "a:b:c"


# -- the reply limit -------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=10)
async def test_running_replies_are_limited_per_owner_and_their_slots_come_back() -> None:
    store = MemoryThreadStore()
    upstream = GatedUpstream(["a", "b"])
    upstream.gate.clear()  # every reply waits for its first delta
    replies = ReplyTasks(store, upstream, "model", max_per_owner=2)
    alice = claims()
    owner = owner_of(alice)
    thread_id = await store.create_thread(owner)
    try:
        for n in range(2):
            with replies.reserve(owner) as slot:
                await store.add_message(thread_id, owner, "user", "hi")
                slot.start(alice, thread_id, f"resp_{n}", Secret("k"))
        assert len(replies) == 2
        with pytest.raises(TooManyRequests) as refused, replies.reserve(owner):
            pytest.fail("a third slot was handed out")
        assert refused.value.retry_after is not None
        with replies.reserve(owner_of(claims("alice", "other"))):
            pass  # another owner: not held up

        upstream.gate.set()
        assert await eventually(lambda: len(replies) == 0)
        with replies.reserve(owner):
            pass
        thread = await store.get_thread(thread_id, owner)
        assert thread is not None
        assert [m.role for m in thread.messages].count("assistant") == 2
    finally:
        await replies.close()
        await store.close()


@pytest.mark.gen_test(timeout=10)
async def test_a_slot_not_started_is_freed_when_its_message_is_refused() -> None:
    store = MemoryThreadStore()
    replies = ReplyTasks(store, GatedUpstream([]), "model", max_per_owner=1)
    owner = owner_of(claims())
    thread_id = await store.create_thread(owner)
    try:
        await store.add_message(thread_id, owner, "user", "only one")
        for _ in range(3):  # the slot must not leak, round after round
            with pytest.raises(ThreadFull), replies.reserve(owner):
                await store.add_message(thread_id, owner, "user", "two", limit=1)
        with replies.reserve(owner):
            pass
    finally:
        await store.close()


# -- a reply the readers can keep up with ----------------------------------------------------


@pytest.mark.gen_test(timeout=10)
async def test_a_reply_of_more_deltas_than_a_reader_queue_reaches_every_reader() -> None:
    # An upstream that never waits (many deltas in one network read, say): the reply loop
    # itself must give the readers a turn, or their queues overflow before they run.
    count = 2 * DEFAULT_QUEUE_SIZE + 10
    store = MemoryThreadStore()
    replies = ReplyTasks(store, GatedUpstream(["x"] * count), "model")
    alice = claims()
    owner = owner_of(alice)
    thread_id = await store.create_thread(owner)
    try:
        async with await store.subscribe(thread_id) as subscription:
            with replies.reserve(owner) as slot:
                slot.start(alice, thread_id, "resp_1", Secret("k"))
            kinds: list[str] = []
            while not kinds or kinds[-1] not in ("done", "error"):
                event = await subscription.get(timeout=WAIT)
                assert event is not None, f"stalled after {len(kinds)} events"
                kinds.append(event.kind)
        assert kinds.count("delta") == count
        assert kinds[-1] == "done"
    finally:
        await replies.close()
        await store.close()
