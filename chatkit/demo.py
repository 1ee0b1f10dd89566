"""``tokensvc serve --demo``: a chat panel page and the session hand-off it needs.

In the real product the editor extension (an authenticated client) calls ``POST /sessions``
and hands the token to its webview. The demo plays the extension's part on the server: its
``POST /chatkit/demo/session`` mints a session for the first configured client with the
secret_key_id ``demo``, exactly as ``POST /sessions`` would. It answers only requests from
the loopback interface and is off unless ``--demo`` is given: it hands out tokens without
client authentication, which is what a development demo needs and nothing else should do.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from tokensvc import BaseHandler, NotFound, Secret, TemporarilyUnavailable
from tokensvc.errors import InvalidGrant, ProviderUnavailable, UnknownSecret

__all__ = ["DEMO_SECRET_KEY_ID", "demo_routes"]

DEMO_SECRET_KEY_ID = "demo"  # noqa: S105 - an id, not a secret
DEMO_USER = "demo-user"
# With the offline echo upstream no real key is needed; this placeholder is sealed instead
# when the secret holder has no "demo" entry.
ECHO_PLACEHOLDER_SECRET = "echo-demo-placeholder"  # noqa: S105 - deliberately public


class _LoopbackOnly(BaseHandler):
    def prepare(self) -> None:
        try:
            loopback = ipaddress.ip_address(self.request.remote_ip or "").is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise NotFound("demo routes answer loopback clients only")


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
        try:
            secret = await services.provider.resolve(DEMO_SECRET_KEY_ID)
        except UnknownSecret:
            if services.config.chatkit.upstream_url not in ("", "echo"):
                raise InvalidGrant("no 'demo' secret for a real upstream") from None
            secret = Secret(ECHO_PLACEHOLDER_SECRET)
        except ProviderUnavailable as err:
            raise TemporarilyUnavailable("secret holder unavailable", retry_after=5) from err
        issued = services.issuer.issue_session(
            client_id=client.client_id,
            sub=DEMO_USER,
            skid=DEMO_SECRET_KEY_ID,
            secret=secret,
            scope="chatkit",
            ttl=services.config.tokens.ttl,
        )
        self.no_store()
        self.write_json(
            {
                "access_token": issued.token,
                "token_type": "Bearer",
                "expires_at": int(issued.claims.exp),
                "expires_in": int(issued.claims.exp - services.clock()),
                "session_id": issued.claims.sid,
            }
        )


def demo_routes(kwargs: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (r"/chatkit/demo", DemoPageHandler),
        (r"/chatkit/demo/session", DemoSessionHandler),
    ]
