"""The session endpoints: /sessions, refresh, ticket, revocation, JWKS, health, metrics."""

from __future__ import annotations

import logging
from typing import Any

from tokensvc.auth import TokenAuthMixin
from tokensvc.claims import SESSION, TICKET, Claims
from tokensvc.errors import (
    InvalidRequest,
    InvalidToken,
    StoreUnavailable,
    UnauthorizedClient,
    store_unavailable,
)
from tokensvc.revocation.base import RevocationEntry, RevocationKind
from tokensvc.sessions import session_response, start_session
from tokensvc.validation import (
    only_fields,
    optional_ttl,
    optional_user,
    requested_scope,
    secret_key_id,
    session_id,
)
from tokensvc.web import BaseHandler

__all__ = ["routes"]

log = logging.getLogger("tokensvc.sessions")


class SessionsHandler(BaseHandler):
    """``POST /sessions``: a client trades a secret_key_id for a session token."""

    async def post(self) -> None:
        services = self.services
        client = services.clients.authenticate(
            self.request.headers.get("Authorization"), self.request.remote_ip or ""
        )
        services.rate_limiter.check(client)
        body = self.json_body()
        only_fields(body, {"secret_key_id", "user", "ttl", "scope"})
        skid = secret_key_id(body.get("secret_key_id"))
        user = optional_user(body.get("user"))
        tokens = services.config.tokens
        ttl = optional_ttl(body.get("ttl"), max_ttl=tokens.max_ttl) or tokens.ttl
        scope = requested_scope(body.get("scope"))
        issued = await start_session(
            services, client, secret_key_id=skid, user=user, ttl=ttl, scope=scope
        )
        log.info("session %s issued to client %s", issued.claims.sid, client.client_id)
        self.no_store()
        self.write_json(session_response(services, issued))


class RefreshHandler(TokenAuthMixin, BaseHandler):
    """``POST /sessions/refresh``: a new token for the same session, secret re-sealed."""

    required_scope = None

    async def post(self) -> None:
        body = self.json_body(optional=True)
        only_fields(body, {"ttl"})
        tokens = self.services.config.tokens
        ttl = optional_ttl(body.get("ttl"), max_ttl=tokens.max_ttl) or tokens.ttl
        # No new lookup: the secret comes out of the presented token.
        secret = self.upstream_secret()
        issued = self.services.issuer.refresh(self.claims, secret, ttl)
        self.no_store()
        self.write_json(session_response(self.services, issued))


class TicketHandler(TokenAuthMixin, BaseHandler):
    """``POST /sessions/ticket``: a single-use stream ticket for EventSource URLs."""

    required_scope = None

    async def post(self) -> None:
        issued = self.services.issuer.issue_ticket(self.claims)
        self.services.metrics.inc("tokensvc_tokens_issued_total", "kind", "ticket")
        self.no_store()
        self.write_json(
            {
                "ticket": issued.token,
                "expires_in": max(0, int(issued.claims.exp - self.services.clock())),
            }
        )


class _RevokerMixin:
    """Records revocations; a store failure is a 503, never a false success."""

    async def record(
        self: Any,
        kind: RevocationKind,
        value: str,
        client_id: str,
        expires_at: float,
        not_after: float | None = None,
    ) -> None:
        entry = RevocationEntry(
            kind=kind,
            value=value,
            client_id=client_id,
            iss=self.services.config.tokens.issuer,
            expires_at=expires_at,
            not_after=not_after,
        )
        try:
            await self.services.revocations.revoke(entry)
        except StoreUnavailable as err:
            raise store_unavailable(err) from err
        self.services.metrics.inc("tokensvc_revocations_total", "kind", kind)
        log.info("revoked %s for client %s", kind, client_id)

    def session_expiry(self: Any, claims: Claims) -> float:
        return float(claims.session_end + self.services.config.tokens.leeway)


class CurrentSessionHandler(_RevokerMixin, TokenAuthMixin, BaseHandler):
    """``DELETE /sessions/current``: the holder of a session token ends its session."""

    required_scope = None

    async def delete(self) -> None:
        claims = self.claims
        await self.record("sid", claims.sid, claims.client_id, self.session_expiry(claims))
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()


class RevokeHandler(_RevokerMixin, BaseHandler):
    """``POST /sessions/revoke``: a client revokes a token, session, secret id or user."""

    async def post(self) -> None:
        services = self.services
        client = services.clients.authenticate(
            self.request.headers.get("Authorization"), self.request.remote_ip or ""
        )
        body = self.json_body()
        fields = {"token", "session_id", "secret_key_id", "user"}
        only_fields(body, fields)
        given = [name for name in fields if name in body]
        if len(given) != 1:
            raise InvalidRequest("exactly one of token, session_id, secret_key_id, user")
        tokens = services.config.tokens
        now = services.clock()
        # Every token issued up to now expires by now + max_ttl (plus leeway).
        horizon = now + tokens.max_ttl + tokens.leeway
        if "token" in body:
            await self._revoke_token(body["token"], client.client_id)
        elif "session_id" in body:
            sid = session_id(body["session_id"])
            await self.record(
                "sid", sid, client.client_id, now + tokens.session_max_lifetime + tokens.leeway
            )
        elif "secret_key_id" in body:
            skid = secret_key_id(body["secret_key_id"])
            await self.record("skid", skid, client.client_id, horizon, not_after=now)
        else:
            user = optional_user(body["user"])
            if user is None:
                raise InvalidRequest("user must be a string")
            await self.record("sub", user, client.client_id, horizon, not_after=now)
        self.no_store()
        self.write_json({"revoked": True})

    async def _revoke_token(self, token: Any, client_id: str) -> None:
        if not isinstance(token, str):
            raise InvalidRequest("token must be a string")
        try:
            claims = self.services.verifier.verify(token, frozenset({SESSION, TICKET}))
        except InvalidToken:
            # RFC 7009: an invalid, expired or unknown token needs no revoking; answering
            # 200 also tells the caller nothing about it.
            return
        if claims.client_id != client_id:
            raise UnauthorizedClient("token belongs to another client")
        await self.record("sid", claims.sid, claims.client_id, self.session_expiry(claims))


class JwksHandler(BaseHandler):
    """``GET /.well-known/jwks.json``: public signing keys (staged, active, retiring)."""

    def get(self) -> None:
        ring = self.services.ring()
        max_age = self.services.config.tokens.jwks_max_age
        self.set_header("Cache-Control", f"public, max-age={max_age}")
        self.set_header("ETag", ring.jwks_etag)
        self.set_header("Content-Type", "application/jwk-set+json")
        wanted = _etags(self.request.headers.get("If-None-Match", ""))
        if ring.jwks_etag in wanted or "*" in wanted:
            self.set_status(304)
            self.finish()
            return
        self.finish(ring.jwks_body)


def _etags(header: str) -> set[str]:
    return {part.strip().removeprefix("W/") for part in header.split(",") if part.strip()}


class HealthHandler(BaseHandler):
    """``GET /healthz``: the process is up."""

    def get(self) -> None:
        self.write_json({"status": "ok"})


class ReadyHandler(BaseHandler):
    """``GET /readyz``: keys loaded and the revocation store in sync."""

    def get(self) -> None:
        services = self.services
        checks: dict[str, str] = {
            "keys": "ok" if services.ring().usable else "no usable key ring",
            "revocation": "ok" if services.revocations.ready else "not in sync",
        }
        failing = [name for name, value in checks.items() if value != "ok"]
        for name, check in services.readiness.items():
            # A check may pass with a warning (e.g. a broken ring on disk while the last
            # good ring keeps serving): it is reported but does not make the process unready.
            ok, detail = check()
            checks[name] = detail or ("ok" if ok else "failing")
            if not ok:
                failing.append(name)
        if not failing:
            self.write_json({"status": "ready", "checks": checks})
            return
        self.set_header("Retry-After", "1")
        self.write_json(
            {
                "error": "temporarily_unavailable",
                "error_description": "The service is not ready.",
                "checks": checks,
            },
            status=503,
        )


class MetricsHandler(BaseHandler):
    """``GET /metrics``: Prometheus text format."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.services.metrics.render())


def routes() -> list[tuple[str, type[BaseHandler]]]:
    """The core URL rules; the app factory appends extension routes after them."""
    return [
        (r"/sessions", SessionsHandler),
        (r"/sessions/refresh", RefreshHandler),
        (r"/sessions/ticket", TicketHandler),
        (r"/sessions/current", CurrentSessionHandler),
        (r"/sessions/revoke", RevokeHandler),
        (r"/\.well-known/jwks\.json", JwksHandler),
        (r"/healthz", HealthHandler),
        (r"/readyz", ReadyHandler),
        (r"/metrics", MetricsHandler),
    ]
