"""Secrets from an HTTP secret holder.

Each lookup is one request::

    POST <url>
    Authorization: Bearer <auth>          (when auth is set)
    Content-Type: application/json

    {"secret_key_id": "<id>"}

and the holder answers ``200 {"secret": "<non-empty string>"}`` (other members are ignored),
or ``404`` when it does not know the id (:class:`~tokensvc.errors.UnknownSecret`). Anything
else, including a redirect, another status, a body that is not such JSON, a connection error
or no answer within ``timeout`` seconds, is :class:`~tokensvc.errors.ProviderUnavailable`.
The holder's response body is never logged nor put in an exception: on an error it may echo
the request or hold a secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import urllib.parse
from typing import Any

from tornado.httpclient import HTTPRequest, HTTPResponse
from tornado.ioloop import IOLoop
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from tokensvc.errors import ProviderUnavailable, UnknownSecret
from tokensvc.redacted import Secret

__all__ = ["HttpSecretProvider"]

log = logging.getLogger(__name__)

# A secret is a few hundred bytes at most. The limit keeps a broken or hostile holder from
# making us buffer megabytes for one lookup.
MAX_RESPONSE_SIZE = 64 * 1024

_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}


class HttpSecretProvider:
    """Resolves ids by POSTing them to a secret holder over HTTP(S)."""

    def __init__(self, url: str, auth: Secret | None, timeout: float) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("url must be an http(s) URL with a host")
        if parsed.username is not None or parsed.password is not None:
            # Credentials in a URL end up in logs, and tornado would send them as Basic auth
            # in place of the bearer token.
            raise ValueError("url must not contain credentials; use auth")
        if auth is not None and not _is_header_safe(auth.reveal()):
            raise ValueError("auth must be printable ASCII without spaces at either end")
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError("timeout must be a positive number of seconds")
        self._url = url
        self._auth = auth
        self._timeout = timeout
        self._client: SimpleAsyncHTTPClient | None = None
        # Shown in reprs and messages: scheme, host and path only, since a query may hold a key.
        self._display_url = urllib.parse.urlunsplit(parsed._replace(query="", fragment=""))
        if parsed.scheme == "http" and parsed.hostname not in _LOOPBACK_HOSTS:
            # The bearer token goes out, and the secret comes back, in clear.
            log.warning(
                "secret provider %s is plain http to a non-loopback host; use https",
                self._display_url,
            )

    def __repr__(self) -> str:
        return f"HttpSecretProvider({self._display_url!r}, auth={self._auth!r})"

    async def resolve(self, secret_key_id: str) -> Secret:
        """Ask the holder for the secret of ``secret_key_id``."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._auth is not None:
            headers["Authorization"] = f"Bearer {self._auth.reveal()}"
        request = HTTPRequest(
            self._url,
            method="POST",
            headers=headers,
            body=json.dumps({"secret_key_id": secret_key_id}),
            connect_timeout=self._timeout,
            request_timeout=self._timeout,
            # A redirect could carry the bearer token, or hand the lookup, to another host.
            follow_redirects=False,
            # Compressed answers are refused: a small gzip body can inflate far past the size
            # limit, and a secret is too short to be worth compressing.
            decompress_response=False,
            user_agent="tokensvc",
        )
        fetch = self._http_client().fetch(request, raise_error=False)
        # Once nobody waits for the request any more (a caller's deadline passed, or close()
        # ended it), its outcome must still count as seen, or asyncio logs it as an error.
        fetch.add_done_callback(_mark_retrieved)
        try:
            # shield: when a caller stops waiting (SingleFlightProvider's deadline), tornado's
            # own future must not be cancelled under it (tornado would log the request's later
            # outcome as an error). The request still ends, at the latest at request_timeout.
            response = await asyncio.shield(fetch)
        except Exception as err:
            # Tornado's errors name the status or the socket problem, never the body.
            raise ProviderUnavailable(
                f"secret provider {self._display_url} failed for {secret_key_id!r}: "
                f"{type(err).__name__}: {err}"
            ) from err
        return self._secret_from(response, secret_key_id)

    async def close(self) -> None:
        """Close the HTTP client (its pooled resolver and connections)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def _http_client(self) -> SimpleAsyncHTTPClient:
        # Created lazily, inside the running loop it belongs to (the provider may be built
        # before the loop, or before worker processes fork). A private instance, so close()
        # cannot close a client shared with other code, and the pure-Python implementation,
        # so the size limit applies whatever AsyncHTTPClient is configured to be.
        loop = IOLoop.current()
        if self._client is None or self._client.io_loop is not loop:
            if self._client is not None:
                self._client.close()
            self._client = SimpleAsyncHTTPClient(
                force_instance=True, max_body_size=MAX_RESPONSE_SIZE
            )
        return self._client

    def _secret_from(self, response: HTTPResponse, secret_key_id: str) -> Secret:
        where = f"secret provider {self._display_url}"
        if response.code == 404:
            raise UnknownSecret(f"{where} does not know secret_key_id {secret_key_id!r}")
        if response.code != 200:
            raise ProviderUnavailable(
                f"{where} answered HTTP {response.code} for {secret_key_id!r}"
            )
        try:
            # RecursionError: deeply nested arrays fit easily in the size limit.
            document = json.loads(response.body)
        except (ValueError, RecursionError):
            raise ProviderUnavailable(
                f"{where} answered non-JSON for {secret_key_id!r}"
            ) from None  # the decode error quotes the document
        secret = document.get("secret") if isinstance(document, dict) else None
        if not isinstance(secret, str) or not secret:
            raise ProviderUnavailable(
                f'{where} answered without a non-empty string "secret" for {secret_key_id!r}'
            )
        return Secret(secret)


def _is_header_safe(value: str) -> bool:
    """Whether ``value`` can go into a header as is: no CR/LF injection, no stray spaces."""
    return bool(value) and value == value.strip() and all(" " <= c <= "~" for c in value)


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
