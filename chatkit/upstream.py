"""Upstream AI clients: the :class:`Upstream` protocol, the OpenAI client and the echo model.

Handlers call an :class:`Upstream` with the secret unsealed from the session token; they
never see HTTP. :func:`make_upstream` picks the implementation from ``chatkit.upstream_url``.

Every failure of the OpenAI client surfaces as :class:`tokensvc.UpstreamError`
(502 ``upstream_error``) whose ``log_message`` names what failed and the HTTP status, and
nothing else: no secret and no upstream body, because upstream error bodies can quote the
key back ("Incorrect API key provided: sk-ab***yz"). For the same reason the SDK's exception
is not chained (``from None``): a logged traceback would print its message.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any, Protocol, cast

import openai
from openai.types.chat import ChatCompletionMessageParam

from tokensvc import ConfigError, Secret, UpstreamError

__all__ = [
    "AMBIENT_OPENAI_ENV",
    "CHATKIT_BETA_HEADER",
    "ECHO_SESSION_TTL",
    "EchoUpstream",
    "OpenAIUpstream",
    "Upstream",
    "make_upstream",
]

log = logging.getLogger(__name__)

# The openai client reads these from the environment and adds them to every request, i.e.
# to calls made with a *user's* key. The service has no business sending the operator's.
AMBIENT_OPENAI_ENV = ("OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "OPENAI_CUSTOM_HEADERS")

#: Sent with every hosted ChatKit call; the API refuses them without it.
CHATKIT_BETA_HEADER = {"OpenAI-Beta": "chatkit_beta=v1"}
#: Lifetime of the echo model's fake ChatKit client secrets, seconds.
ECHO_SESSION_TTL = 600

# An API key goes into an HTTP header. A key with other characters (a newline, a space)
# would make the HTTP library raise an error that quotes the header, i.e. the key.
_HEADER_SAFE = re.compile(r"[\x21-\x7e]{1,4096}")
# x-request-id is an upstream-chosen value that ends up in our logs: keep it inert.
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
# A word with the whitespace before (only at the start) and after it; or only whitespace.
_WORDS = re.compile(r"\s*\S+\s*|\s+")


class Upstream(Protocol):
    """What the ChatKit handlers need from an upstream AI API."""

    def stream_reply(
        self, api_key: Secret, model: str, messages: list[dict[str, str]]
    ) -> AsyncGenerator[str, None]:
        """Stream the assistant's reply to ``messages`` as text deltas.

        ``messages`` are ``{"role": ..., "content": ...}`` dicts, oldest first. Close the
        generator (``aclose()``, or ``contextlib.aclosing``) when stopping early: that is
        what ends the upstream request. Raises :class:`UpstreamError` on any failure.
        """
        ...

    async def create_chatkit_session(
        self, api_key: Secret, workflow_id: str, user: str
    ) -> dict[str, Any]:
        """Create a hosted ChatKit session: ``{"client_secret": str, "expires_at": int}``."""
        ...

    async def close(self) -> None:
        """Release connections; called once at shutdown."""
        ...


class OpenAIUpstream:
    """An OpenAI-compatible API at ``base_url`` (e.g. ``https://api.openai.com/v1``).

    A new ``AsyncOpenAI`` client is made for each call, since the key differs per session
    token and a client cached by key would keep clear secrets in a long-lived map; they all
    share one HTTP connection pool, so a call costs no new TLS context or connection.
    ``timeout`` bounds connecting and each wait for data, seconds; ``max_retries`` is 0 by
    default so a failing upstream turns into a prompt 502 the browser can retry.

    The openai client also takes ``OPENAI_ORG_ID``, ``OPENAI_PROJECT_ID`` and
    ``OPENAI_CUSTOM_HEADERS`` from the environment; a warning is logged at construction
    when one is set, because it would be sent along with every user's key.
    """

    def __init__(self, base_url: str, timeout: float = 30.0, *, max_retries: int = 0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError("chatkit.upstream_url must be an http(s) URL, '' or 'echo'")
        if timeout <= 0:
            raise ConfigError("upstream timeout must be positive")
        if max_retries < 0:
            raise ConfigError("upstream max_retries must not be negative")
        self.base_url = base_url
        self.timeout = timeout
        self.max_retries = max_retries
        self._http: openai.DefaultAsyncHttpxClient | None = None
        # The SDK imports its type modules on first use, which takes most of a second of
        # event-loop time; pay that at start-up instead of in the first user's request.
        for module in ("openai.resources.beta.chatkit", "openai.resources.chat.completions"):
            importlib.import_module(module)
        ambient = [name for name in AMBIENT_OPENAI_ENV if os.environ.get(name)]
        if ambient:
            log.warning(
                "environment sets %s; the openai client sends it with every upstream call",
                ", ".join(ambient),
            )

    def __repr__(self) -> str:
        return f"OpenAIUpstream({self.base_url!r})"

    def _client(self, api_key: Secret) -> openai.AsyncOpenAI:
        key = api_key.reveal()
        if not _HEADER_SAFE.fullmatch(key):
            raise UpstreamError("upstream api key is not a valid header value")
        if self._http is None or self._http.is_closed:
            self._http = openai.DefaultAsyncHttpxClient()
        # Not closed after the call: closing an AsyncOpenAI closes the shared pool.
        return openai.AsyncOpenAI(
            api_key=key,
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=self.max_retries,
            http_client=self._http,
        )

    async def close(self) -> None:
        """Close the shared connection pool."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def stream_reply(
        self, api_key: Secret, model: str, messages: list[dict[str, str]]
    ) -> AsyncGenerator[str, None]:
        """Stream ``chat.completions`` deltas; see :meth:`Upstream.stream_reply`."""
        client = self._client(api_key)
        try:
            stream = await client.chat.completions.create(
                model=model,
                messages=cast("list[ChatCompletionMessageParam]", messages),
                stream=True,
            )
            # Leaving this block, normally, by error, or because the consumer closed us
            # (GeneratorExit at the yield) or was cancelled, closes the response.
            async with stream:
                async for chunk in stream:
                    text = _delta_text(chunk)
                    if text:
                        yield text
        except UpstreamError:
            raise
        except Exception as err:
            raise _upstream_error("chat completion", err) from None

    async def create_chatkit_session(
        self, api_key: Secret, workflow_id: str, user: str
    ) -> dict[str, Any]:
        """``POST {base_url}/chatkit/sessions`` with ``workflow.id`` and ``user``."""
        if not workflow_id:
            raise UpstreamError("chatkit.workflow_id is not configured")
        client = self._client(api_key)
        try:
            session = await client.beta.chatkit.sessions.create(
                workflow={"id": workflow_id},
                user=user,
                # The SDK adds this header itself today; the contract requires it, so it is
                # stated here too rather than left to an SDK detail.
                extra_headers=CHATKIT_BETA_HEADER,
            )
        except Exception as err:
            raise _upstream_error("chatkit session", err) from None
        client_secret = getattr(session, "client_secret", None)
        expires_at = getattr(session, "expires_at", None)
        if not isinstance(client_secret, str) or not client_secret:
            raise UpstreamError("chatkit session: answer has no client_secret")
        if not isinstance(expires_at, int) or isinstance(expires_at, bool):
            raise UpstreamError("chatkit session: answer has no integer expires_at")
        return {"client_secret": client_secret, "expires_at": expires_at}


def _delta_text(chunk: object) -> str | None:
    # The SDK builds chunks without validation, so a malformed one can hold anything.
    choices = getattr(chunk, "choices", None)
    if not isinstance(choices, list) or not choices:
        return None  # e.g. the final usage chunk, which has no choices
    content = getattr(getattr(choices[0], "delta", None), "content", None)
    return content if isinstance(content, str) else None


def _upstream_error(operation: str, err: Exception) -> UpstreamError:
    """An UpstreamError describing ``err`` by kind and status only."""
    if isinstance(err, openai.APIStatusError):
        detail = f"HTTP {err.status_code}"
        request_id = err.request_id
        if request_id and _REQUEST_ID.fullmatch(request_id):
            detail += f", request id {request_id}"
    elif isinstance(err, openai.APITimeoutError):
        detail = "timed out"
    elif isinstance(err, openai.APIConnectionError):
        detail = "connection failed"
    elif isinstance(err, openai.APIError):
        detail = "error in the stream"
    elif isinstance(err, openai.OpenAIError):
        detail = "client error"
    else:
        detail = f"malformed answer ({type(err).__name__})"
    return UpstreamError(f"upstream {operation} failed: {detail}")


class EchoUpstream:
    """The offline model: replies with the last user message, word by word.

    For development and tests on a machine without network access only. Its ChatKit
    sessions are fake: the ``client_secret`` starts with ``echo_cs_`` and works nowhere.
    ``delay`` is the pause between words, seconds; with ``0`` it still gives the event loop
    a turn between words, as a network stream would.
    """

    def __init__(
        self,
        delay: float = 0.0,
        *,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = lambda: secrets.token_urlsafe(24),
    ) -> None:
        if delay < 0:
            raise ValueError("delay must not be negative")
        self.delay = delay
        self._clock = clock
        self._new_id = new_id

    def __repr__(self) -> str:
        return f"EchoUpstream(delay={self.delay})"

    async def stream_reply(
        self, api_key: Secret, model: str, messages: list[dict[str, str]]
    ) -> AsyncGenerator[str, None]:
        """Yield the last user message in pieces that concatenate back to it exactly."""
        text = next(
            (m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), ""
        )
        # Each piece is a word with the whitespace around it, so "".join(pieces) == text.
        for index, piece in enumerate(_WORDS.findall(text)):
            if index:
                # Even with no delay: a long text must not run without yielding, or the
                # readers of the thread never get a turn and fall behind all at once.
                await asyncio.sleep(self.delay)
            yield piece

    async def close(self) -> None:
        """Nothing to release."""

    async def create_chatkit_session(
        self, api_key: Secret, workflow_id: str, user: str
    ) -> dict[str, Any]:
        """A fake, locally generated session: ``echo_cs_...``, valid for 10 minutes."""
        return {
            "client_secret": f"echo_cs_{self._new_id()}",
            "expires_at": int(self._clock()) + ECHO_SESSION_TTL,
        }


def make_upstream(upstream_url: str, *, timeout: float = 30.0) -> Upstream:
    """The upstream for ``chatkit.upstream_url``: ``""`` or ``"echo"`` is the echo model."""
    if upstream_url.strip().lower() in ("", "echo"):
        return EchoUpstream()
    return OpenAIUpstream(upstream_url.strip(), timeout)
