"""TokenAuthMixin: the one way a route is protected by a session token or stream ticket.

Usage (the mixin comes before the handler class, because it overrides ``prepare``)::

    class ThreadHandler(TokenAuthMixin, BaseHandler):
        required_scope = "chatkit"

        async def get(self, thread_id):
            subject = self.claims.sub

It authenticates in ``async prepare()`` and answers 401 itself; it does not redirect like
``@tornado.web.authenticated``. The checks run in the contract's order, cheapest first:
transport, shape, header, signature and claims, revocation, scope.
"""

from __future__ import annotations

from typing import Any, ClassVar

from tokensvc.claims import SESSION, TICKET, Claims, TokenType
from tokensvc.errors import (
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    MissingToken,
    StoreUnavailable,
    store_unavailable,
)
from tokensvc.redacted import Secret
from tokensvc.services import Services

__all__ = ["TokenAuthMixin"]


QUERY_TOKEN_PARAM = "access_token"  # noqa: S105 - a parameter name


class TokenAuthMixin:
    """Verifies the bearer token of every request to the handler.

    Class attributes configure a route:

    - ``token_type``: what the ``Authorization`` header must carry (a session token).
    - ``required_scope``: a scope the token must have, or None.
    - ``accepts_query_token``: True only on GET routes that serve ``text/event-stream``;
      there ``?access_token=<stream ticket>`` is accepted on GET and HEAD (and a session
      token too when ``[tokens] allow_session_token_in_query`` is on). Elsewhere the
      parameter is ignored.
    """

    token_type: ClassVar[TokenType] = SESSION
    required_scope: ClassVar[str | None] = "chatkit"
    accepts_query_token: ClassVar[bool] = False

    claims: Claims
    services: Services
    request: Any
    settings: Any
    _allowed_methods: Any  # from BaseHandler

    async def prepare(self) -> None:
        if self.request.method == "OPTIONS":
            return  # CORS preflights carry no credentials by design
        if self.request.method not in self._allowed_methods():
            return  # the handler answers 405 itself; no token is needed to learn that
        self.claims = await self.authenticate()
        parent = super()
        if hasattr(parent, "prepare"):
            result = parent.prepare()
            if result is not None:
                await result

    def get_current_user(self) -> Claims | None:
        return getattr(self, "claims", None)

    async def authenticate(self) -> Claims:
        """Run every check; raises an ApiError subclass on the first failure."""
        services: Services = self.settings["tokensvc"]
        token, accept = self._credentials(services)
        try:
            claims = services.verifier.verify(token, accept)
        except InvalidToken as err:
            services.metrics.inc(
                "tokensvc_token_rejections_total",
                "reason",
                "expired" if err.expired else "invalid",
            )
            raise
        try:
            if services.revocations.is_revoked(claims):
                services.metrics.inc("tokensvc_token_rejections_total", "reason", "revoked")
                raise InvalidToken("token revoked")
            # HEAD is a safe method: it checks a ticket like GET does but must not use it up
            # (so it cannot tell a ticket that was already used).
            if (
                claims.token_type == TICKET
                and self.request.method != "HEAD"
                and not await services.revocations.consume_ticket(
                    claims.iss, claims.jti, claims.exp + services.config.tokens.leeway
                )
            ):
                services.metrics.inc("tokensvc_token_rejections_total", "reason", "reused")
                raise InvalidToken("stream ticket already used")
        except StoreUnavailable as err:
            # Fail closed: without a trustworthy revocation list no token is accepted.
            raise store_unavailable(err) from err
        if self.required_scope is not None and not claims.has_scope(self.required_scope):
            raise InsufficientScope(self.required_scope, "token lacks the route's scope")
        return claims

    def _credentials(self, services: Services) -> tuple[str, frozenset[TokenType]]:
        headers = self.request.headers.get_list("Authorization")
        if len(headers) > 1:
            raise InvalidRequest("more than one Authorization header")
        from_query: list[bytes] = []
        if self.accepts_query_token and self.request.method in ("GET", "HEAD"):
            from_query = self.request.query_arguments.get(QUERY_TOKEN_PARAM, [])
        if from_query and headers:
            raise InvalidRequest("token in both the header and the query")
        if len(from_query) > 1:
            raise InvalidRequest("access_token given more than once")
        if from_query:
            try:
                token = from_query[0].decode("ascii")
            except UnicodeDecodeError as err:
                raise InvalidToken("query token is not ASCII") from err
            accept: frozenset[TokenType] = frozenset({TICKET})
            if services.config.tokens.allow_session_token_in_query:
                accept = frozenset({TICKET, self.token_type})
            return token, accept
        if not headers:
            raise MissingToken("no credentials")
        scheme, _, token = headers[0].strip().partition(" ")
        if scheme.lower() != "bearer":
            raise MissingToken("authorization scheme is not Bearer")
        return token.strip(), frozenset({self.token_type})

    def upstream_secret(self) -> Secret:
        """Unseal the upstream secret of the verified session token (session tokens only)."""
        claims = self.claims
        if claims.sealed is None:
            raise InvalidToken("token carries no sealed secret")
        services: Services = self.settings["tokensvc"]
        return services.sealer.unseal(claims.sealed, jti=claims.jti, audience=claims.aud)
