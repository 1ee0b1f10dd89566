"""A protected route for tests: what an extension handler looks like."""

from __future__ import annotations

from typing import Any

from tokensvc.auth import TokenAuthMixin
from tokensvc.services import Services
from tokensvc.web import BaseHandler


class WhoAmIHandler(TokenAuthMixin, BaseHandler):
    required_scope = "chatkit"

    def get(self) -> None:
        self.write_json({"sub": self.claims.sub, "sid": self.claims.sid})

    def post(self) -> None:
        self.write_json({"secret_length": len(self.upstream_secret().reveal())})


class StreamProbeHandler(TokenAuthMixin, BaseHandler):
    """Stands in for an event-stream route: accepts ?access_token=<ticket> on GET."""

    accepts_query_token = True

    def get(self, *_args: Any) -> None:
        self.write_json({"type": self.claims.token_type, "sid": self.claims.sid})


class AdminScopeHandler(TokenAuthMixin, BaseHandler):
    required_scope = "admin"

    def get(self) -> None:
        self.write_json({"ok": True})


class ProbeExtension:
    def routes(self, services: Services) -> list[tuple[Any, ...]]:
        return [
            (r"/probe/whoami", WhoAmIHandler),
            (r"/probe/events", StreamProbeHandler),
            (r"/probe/admin", AdminScopeHandler),
        ]

    async def start(self, services: Services) -> None:
        return None

    async def close(self) -> None:
        return None
