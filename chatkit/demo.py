"""``tokensvc serve --demo``: a chat panel page and the session hand-off it needs.

In the real product the editor extension (an authenticated client) calls ``POST /sessions``
and hands the token to its webview. The demo plays the extension's part on the server: its
``POST /chatkit/demo/session`` starts a session for the first configured client with the
secret_key_id ``demo``, through the same checks as ``POST /sessions`` (the client's allowed
ids, its rate limit, the just-in-time lookup). It hands out tokens without client
authentication, which only a development demo may do: it is off unless ``--demo`` is given
and answers only loopback requests addressed to a loopback host, so a web page elsewhere
cannot reach it through DNS rebinding.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from tokensvc import (
    BaseHandler,
    InvalidGrant,
    NotFound,
    Secret,
    session_response,
    start_session,
)

__all__ = ["DEMO_SECRET_KEY_ID", "DEMO_USER", "ECHO_PLACEHOLDER_SECRET", "demo_routes"]

DEMO_SECRET_KEY_ID = "demo"  # noqa: S105 - an id, not a secret
DEMO_USER = "demo-user"
# With the offline echo model no real key is needed: when the secret holder has no "demo"
# entry, this placeholder is sealed instead, so the demo works on a fresh checkout.
ECHO_PLACEHOLDER_SECRET = "echo-demo-placeholder"  # noqa: S105 - deliberately public
_LOOPBACK_NAMES = {"localhost"}


def _is_loopback_host(host: str) -> bool:
    """Whether a Host/Origin host names this machine: localhost or a loopback address."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _LoopbackOnly(BaseHandler):
    def prepare(self) -> None:
        request = self.request
        try:
            peer_ok = ipaddress.ip_address(request.remote_ip or "").is_loopback
        except ValueError:
            peer_ok = False
        host_ok = _is_loopback_host(urlsplit(f"//{request.host}").hostname or "")
        origin = request.headers.get("Origin")
        origin_ok = origin is None or _is_loopback_host(urlsplit(origin).hostname or "")
        if not (peer_ok and host_ok and origin_ok):
            raise NotFound("demo routes answer loopback requests to a loopback host only")


class DemoPageHandler(_LoopbackOnly):
    """``GET /chatkit/demo``: the chat panel page."""

    def initialize(self, **kwargs: Any) -> None:
        super().initialize()
        from chatkit.extension import STATIC_DIR

        self._page = (STATIC_DIR / "demo.html").read_bytes()

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header(
            "Content-Security-Policy",
            "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
        )
        self.finish(self._page)


class DemoSessionHandler(_LoopbackOnly):
    """``POST /chatkit/demo/session``: what the extension host would do, for the demo page."""

    async def post(self) -> None:
        services = self.services
        client = services.config.clients[0]
        services.rate_limiter.check(client)
        ttl = services.config.tokens.ttl
        try:
            issued = await start_session(
                services,
                client,
                secret_key_id=DEMO_SECRET_KEY_ID,
                user=DEMO_USER,
                ttl=ttl,
                scope="chatkit",
            )
        except InvalidGrant:
            if services.config.chatkit.upstream_url not in ("", "echo"):
                raise
            issued = services.issuer.issue_session(
                client_id=client.client_id,
                sub=DEMO_USER,
                skid=DEMO_SECRET_KEY_ID,
                secret=Secret(ECHO_PLACEHOLDER_SECRET),
                scope="chatkit",
                ttl=ttl,
            )
        self.no_store()
        self.write_json(session_response(services, issued))


def demo_routes(kwargs: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (r"/chatkit/demo", DemoPageHandler),
        (r"/chatkit/demo/session", DemoSessionHandler),
    ]
