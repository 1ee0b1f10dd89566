"""The application factory: services in, a Tornado Application out.

Extensions (the ChatKit routes are one) are handed in, never imported: ``tokensvc`` does not
depend on them. ``tokensvc serve`` finds installed extensions through the
``tokensvc.extensions`` entry point group.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any, Protocol

import tornado.httputil
import tornado.web

from tokensvc.clients import ClientRegistry, RateLimiter
from tokensvc.config import Config
from tokensvc.handlers import routes as core_routes
from tokensvc.keys import RingSource
from tokensvc.logs import log_request
from tokensvc.metrics import Metrics
from tokensvc.providers.base import SecretProvider
from tokensvc.revocation.base import RevocationStore
from tokensvc.sealing import Sealer
from tokensvc.services import Services
from tokensvc.tokens import TokenIssuer, TokenVerifier
from tokensvc.web import NotFoundHandler, OversizedBodyHandler, declares_oversized_body

__all__ = ["Extension", "build_services", "load_extensions", "make_app"]

Rule = tuple[Any, ...]
EXTENSION_GROUP = "tokensvc.extensions"


class Extension(Protocol):
    """Something that adds routes (and may own resources) to the app."""

    def routes(self, services: Services) -> list[Rule]:
        """URL rules to mount; handlers should use TokenAuthMixin for protection."""

    async def start(self, services: Services) -> None:
        """Open resources (stores, connections) before serving."""

    async def close(self) -> None:
        """Release them at shutdown."""


def build_services(
    config: Config,
    *,
    ring: RingSource,
    revocations: RevocationStore,
    provider: SecretProvider,
    clock: Callable[[], float] = time.time,
) -> Services:
    """Wire the core services from their parts (tests pass fakes for any of them)."""
    sealer = Sealer(ring)
    return Services(
        config=config,
        ring=ring,
        issuer=TokenIssuer(config.tokens, ring, clock=clock, sealer=sealer),
        verifier=TokenVerifier(config.tokens, ring, clock=clock),
        sealer=sealer,
        revocations=revocations,
        clients=ClientRegistry(config.clients),
        rate_limiter=RateLimiter(),
        provider=provider,
        clock=clock,
        metrics=Metrics(),
    )


class TokensvcApplication(tornado.web.Application):
    """A Tornado Application that answers an oversized body with a JSON 413 itself."""

    def find_handler(
        self, request: tornado.httputil.HTTPServerRequest, **kwargs: Any
    ) -> tornado.web._HandlerDelegate:
        if declares_oversized_body(request.headers):
            return self.get_handler_delegate(request, OversizedBodyHandler)
        return super().find_handler(request, **kwargs)


def make_app(
    services: Services,
    extensions: Sequence[Extension] = (),
    **settings: Any,
) -> tornado.web.Application:
    """The Tornado application: core routes, then each extension's routes."""
    rules: list[Rule] = list(core_routes())
    for extension in extensions:
        rules.extend(extension.routes(services))
    return TokensvcApplication(
        rules,
        tokensvc=services,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        compress_response=False,  # compression next to secrets invites BREACH-style leaks
        xsrf_cookies=False,  # bearer tokens, no cookies: CSRF does not apply
        **settings,
    )


def load_extensions(config: Config) -> list[Extension]:
    """Instantiate every installed extension (``tokensvc.extensions`` entry points)."""
    found: list[Extension] = []
    for point in sorted(entry_points(group=EXTENSION_GROUP), key=lambda p: p.name):
        factory = point.load()
        found.append(factory(config))
    return found
