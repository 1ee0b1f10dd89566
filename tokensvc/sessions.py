"""Starting a session: what ``POST /sessions`` does once its client is authenticated.

Kept apart from the handler so that anything playing the extension host's part (the
ChatKit demo page does) goes through the very same checks: the client's allowed ids before
the secret holder is asked, the just-in-time lookup, and its error mapping.
"""

from __future__ import annotations

from typing import Any

from tokensvc.config import ClientConfig
from tokensvc.errors import (
    InvalidGrant,
    ProviderUnavailable,
    TemporarilyUnavailable,
    UnauthorizedClient,
    UnknownSecret,
)
from tokensvc.services import Services
from tokensvc.tokens import IssuedToken

__all__ = ["PROVIDER_RETRY_AFTER", "session_response", "start_session"]

PROVIDER_RETRY_AFTER = 5


async def start_session(
    services: Services,
    client: ClientConfig,
    *,
    secret_key_id: str,
    user: str | None,
    ttl: int,
    scope: str,
) -> IssuedToken:
    """Look the secret up for an authenticated client and issue a session token."""
    # Checked before the lookup: the holder is never asked about an id this client may
    # not use, so a client cannot probe which ids exist.
    if not client.may_use(secret_key_id):
        raise UnauthorizedClient(f"client {client.client_id} may not use that id")
    # The just-in-time lookup: the only place a secret is fetched.
    metrics = services.metrics
    try:
        secret = await services.provider.resolve(secret_key_id)
    except UnknownSecret as err:
        metrics.inc("tokensvc_secret_lookups_total", "outcome", "unknown")
        raise InvalidGrant("secret holder does not know the id") from err
    except ProviderUnavailable as err:
        metrics.inc("tokensvc_secret_lookups_total", "outcome", "unavailable")
        raise TemporarilyUnavailable(
            "secret holder unavailable", retry_after=PROVIDER_RETRY_AFTER
        ) from err
    metrics.inc("tokensvc_secret_lookups_total", "outcome", "found")
    return services.issuer.issue_session(
        client_id=client.client_id,
        sub=user or client.client_id,
        skid=secret_key_id,
        secret=secret,
        scope=scope,
        ttl=ttl,
    )


def session_response(services: Services, issued: IssuedToken) -> dict[str, Any]:
    """The JSON answer carrying a session token (``/sessions`` and refresh)."""
    claims = issued.claims
    services.metrics.inc("tokensvc_tokens_issued_total", "kind", "session")
    return {
        "access_token": issued.token,
        "token_type": "Bearer",
        "expires_in": max(0, int(claims.exp - services.clock())),
        "expires_at": int(claims.exp),
        "session_id": claims.sid,
        "scope": " ".join(sorted(claims.scope)),
    }
