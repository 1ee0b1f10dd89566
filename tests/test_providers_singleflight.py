"""SingleFlightProvider: one shared, bounded inner call per id."""

from __future__ import annotations

import asyncio

import pytest

from tokensvc.errors import ProviderUnavailable, UnknownSecret
from tokensvc.providers import SingleFlightProvider
from tokensvc.redacted import Secret

N = 10
# The shared call's timeout where the test is not about it: no busy machine reaches it.
NEVER = 60.0
# The longest any wait here for something that happens at once may take.
WAIT = 10.0


class GatedProvider:
    """An inner provider whose answers wait for the test to open the gate."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.calls: list[str] = []
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        self.cancelled = 0
        self.closed = False

    async def resolve(self, secret_key_id: str) -> Secret:
        self.calls.append(secret_key_id)
        self.started.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.error is not None:
            raise self.error
        return Secret(f"sk-{secret_key_id}-{len(self.calls)}")

    async def close(self) -> None:
        self.closed = True


class StubbornProvider:
    """An inner provider that ignores its first cancellation and answers once released."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.release = asyncio.Event()
        self.finished = asyncio.Event()

    async def resolve(self, secret_key_id: str) -> Secret:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            await self.release.wait()
        self.finished.set()
        return Secret("sk-late")

    async def close(self) -> None:
        pass


async def start(
    provider: SingleFlightProvider, inner: GatedProvider, secret_key_id: str, count: int
) -> list[asyncio.Task[Secret]]:
    """``count`` concurrent resolves of one id, all waiting on the shared call."""
    tasks = [asyncio.create_task(provider.resolve(secret_key_id)) for _ in range(count)]
    await asyncio.wait_for(inner.started.wait(), WAIT)
    await asyncio.sleep(0)  # let every task reach its await
    return tasks


@pytest.mark.gen_test
async def test_concurrent_resolves_share_one_inner_call() -> None:
    inner = GatedProvider()
    provider = SingleFlightProvider(inner, timeout=NEVER)
    tasks = await start(provider, inner, "prod", N)
    inner.gate.set()
    results = await asyncio.gather(*tasks)
    assert inner.calls == ["prod"]
    assert all(r.reveal() == "sk-prod-1" for r in results)


@pytest.mark.gen_test
async def test_different_ids_do_not_share() -> None:
    inner = GatedProvider()
    inner.gate.set()
    provider = SingleFlightProvider(inner, timeout=NEVER)
    await asyncio.gather(provider.resolve("a"), provider.resolve("b"), provider.resolve("a"))
    assert sorted(inner.calls) == ["a", "b"]


@pytest.mark.gen_test
async def test_a_later_call_asks_the_inner_provider_again() -> None:
    inner = GatedProvider()
    inner.gate.set()
    provider = SingleFlightProvider(inner, timeout=NEVER)
    first = await provider.resolve("prod")
    second = await provider.resolve("prod")
    assert inner.calls == ["prod", "prod"]
    assert (first.reveal(), second.reveal()) == ("sk-prod-1", "sk-prod-2")


@pytest.mark.gen_test
@pytest.mark.parametrize("error", [UnknownSecret("no such id"), ProviderUnavailable("down")])
async def test_provider_errors_reach_every_waiter_unchanged(error: Exception) -> None:
    inner = GatedProvider(error=error)
    provider = SingleFlightProvider(inner, timeout=NEVER)
    tasks = await start(provider, inner, "prod", N)
    inner.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert inner.calls == ["prod"]
    assert all(r is error for r in results)


@pytest.mark.gen_test
async def test_unexpected_errors_become_unavailable_without_their_message() -> None:
    inner = GatedProvider(error=RuntimeError("bug that prints sk-in-message"))
    provider = SingleFlightProvider(inner, timeout=NEVER)
    tasks = await start(provider, inner, "prod", 3)
    inner.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        assert isinstance(result, ProviderUnavailable)
        assert isinstance(result.__cause__, RuntimeError)
        assert "sk-in-message" not in str(result)
        assert "RuntimeError" in str(result)


@pytest.mark.gen_test
async def test_slow_inner_call_times_out_for_every_waiter_and_is_cancelled() -> None:
    inner = GatedProvider()
    provider = SingleFlightProvider(inner, timeout=0.05)
    tasks = await start(provider, inner, "prod", N)
    # The gate never opens: only the timeout can answer them.
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT)
    assert all(isinstance(r, ProviderUnavailable) for r in results)
    assert inner.cancelled == 1
    # The timed-out call is forgotten: the next lookup asks again.
    inner.gate.set()
    assert (await provider.resolve("prod")).reveal() == "sk-prod-2"


@pytest.mark.gen_test
async def test_caller_is_answered_in_time_even_if_inner_ignores_cancellation() -> None:
    inner = StubbornProvider()
    provider = SingleFlightProvider(inner, timeout=0.05)
    with pytest.raises(ProviderUnavailable):
        await asyncio.wait_for(provider.resolve("prod"), WAIT)
    # Answered while the inner call, cancelled, is still running.
    assert inner.cancelled.is_set()
    assert not inner.finished.is_set()
    inner.release.set()
    await asyncio.wait_for(inner.finished.wait(), WAIT)


@pytest.mark.gen_test
async def test_cancelling_one_waiter_does_not_cancel_the_shared_call() -> None:
    inner = GatedProvider()
    provider = SingleFlightProvider(inner, timeout=NEVER)
    leaver, stayer = await start(provider, inner, "prod", 2)
    leaver.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaver
    inner.gate.set()
    assert (await stayer).reveal() == "sk-prod-1"
    assert inner.calls == ["prod"]
    assert inner.cancelled == 0


@pytest.mark.gen_test
async def test_call_finishes_after_every_waiter_left() -> None:
    inner = GatedProvider(error=ProviderUnavailable("down"))
    provider = SingleFlightProvider(inner, timeout=NEVER)
    [only] = await start(provider, inner, "prod", 1)
    only.cancel()
    with pytest.raises(asyncio.CancelledError):
        await only
    inner.gate.set()
    # The orphaned call ends (its error is consumed, not reported as never retrieved) and is
    # forgotten, so the next lookup makes a fresh call.
    inner.error = None
    for _ in range(5):
        await asyncio.sleep(0)
    assert (await provider.resolve("prod")).reveal() == "sk-prod-2"
    assert inner.calls == ["prod", "prod"]


@pytest.mark.gen_test
async def test_close_cancels_in_flight_calls_and_closes_the_inner_provider() -> None:
    inner = GatedProvider()
    provider = SingleFlightProvider(inner, timeout=NEVER)
    tasks = await start(provider, inner, "prod", 3)
    await provider.close()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ProviderUnavailable) for r in results)
    assert inner.cancelled == 1
    assert inner.closed


def test_repr_and_timeout_validation() -> None:
    inner = GatedProvider()
    assert "timeout=2" in repr(SingleFlightProvider(inner, timeout=2.0))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="timeout"):
            SingleFlightProvider(inner, timeout=bad)
