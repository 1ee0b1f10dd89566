"""The one error tree of tokensvc.

Every failure a client can see is a :class:`ApiError` subclass carrying its HTTP status and
its wire code as class attributes (``error = "invalid_token"``), the way authlib does. The
web layer renders them in exactly one place (``BaseHandler.write_error``). The human text is
fixed per class: an error must never say *which* check failed (it would be an oracle), and
must never echo a token, ticket, key id or secret. What actually went wrong goes into
``log_message``, which is logged but never sent, and which callers must keep free of
credentials too.

Configuration mistakes (:class:`ConfigError`, :class:`KeyRingError`) sit beside the API
errors, not under them: they stop start-up, they are never an HTTP answer.
"""

from __future__ import annotations

__all__ = [
    "STORE_RETRY_AFTER",
    "ApiError",
    "ConfigError",
    "InsufficientScope",
    "InvalidClient",
    "InvalidGrant",
    "InvalidRequest",
    "InvalidScope",
    "InvalidToken",
    "KeyRingError",
    "MethodNotAllowed",
    "MissingToken",
    "NotFound",
    "PayloadTooLarge",
    "ProviderUnavailable",
    "StoreUnavailable",
    "TemporarilyUnavailable",
    "TokenError",
    "TokensvcError",
    "TooManyRequests",
    "UnauthorizedClient",
    "UnknownSecret",
    "UnsupportedMediaType",
    "UpstreamError",
    "store_unavailable",
]

REALM = "tokensvc"
# Seconds a client should wait before retrying when the revocation store cannot answer.
STORE_RETRY_AFTER = 2


class TokensvcError(Exception):
    """Root of every error raised by tokensvc."""


class ConfigError(TokensvcError):
    """The configuration is invalid; start-up stops with this one-line message."""


class KeyRingError(TokensvcError):
    """The key ring on disk is missing, unreadable, unsafe or inconsistent."""


class UnknownSecret(TokensvcError):
    """The secret holder does not know the requested secret_key_id."""


class ProviderUnavailable(TokensvcError):
    """The secret holder failed or did not answer in time."""


class StoreUnavailable(TokensvcError):
    """The revocation store cannot give a trustworthy answer right now."""


class ApiError(TokensvcError):
    """An error with a fixed HTTP rendering: status, wire code and fixed description."""

    status_code: int = 400
    error: str = "invalid_request"
    description: str = "The request is invalid."

    def __init__(self, log_message: str = "", *, retry_after: int | None = None) -> None:
        # ``log_message`` is for operators only and is never rendered to the client.
        super().__init__(log_message or self.error)
        self.log_message = log_message
        self.retry_after = retry_after

    def challenge(self) -> str | None:
        """The ``WWW-Authenticate`` value to send with this error, if any."""
        return None

    def response_headers(self) -> dict[str, str]:
        """Headers that belong to this error (challenge, Retry-After)."""
        headers: dict[str, str] = {}
        challenge = self.challenge()
        if challenge is not None:
            headers["WWW-Authenticate"] = challenge
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, int(self.retry_after)))
        return headers


class InvalidRequest(ApiError):
    """A parameter is missing, malformed or out of range (RFC 6749 / 6750)."""

    error = "invalid_request"
    description = "The request is missing a parameter or a parameter is invalid."


class InvalidClient(ApiError):
    """Client authentication failed (RFC 6749 section 5.2)."""

    status_code = 401
    error = "invalid_client"
    description = "Client authentication failed."

    def challenge(self) -> str:
        return f'Basic realm="{REALM}"'


class UnauthorizedClient(ApiError):
    """The authenticated client may not do this (e.g. that secret_key_id, that token)."""

    error = "unauthorized_client"
    description = "The client is not authorized for this request."


class InvalidGrant(ApiError):
    """The secret holder does not know the secret_key_id."""

    error = "invalid_grant"
    description = "The secret_key_id is not known."


class InvalidScope(ApiError):
    """The requested scope is not allowed."""

    error = "invalid_scope"
    description = "The requested scope is invalid."


class TokenError(ApiError):
    """Root of the bearer-token failures of a protected resource (RFC 6750)."""

    status_code = 401


class MissingToken(TokenError):
    """No credentials at all: a bare challenge, no error attribute (RFC 6750 section 3.1)."""

    error = "invalid_token"
    description = "Authentication is required."

    def challenge(self) -> str:
        return f'Bearer realm="{REALM}"'


class InvalidToken(TokenError):
    """The token is bad: malformed, unknown key, bad signature, wrong claims, revoked...

    One class and one text for all of them, so the answer is no oracle. Expiry alone is
    told apart (``expired=True``) because clients refresh on it.
    """

    error = "invalid_token"
    description = "The access token is invalid."
    expired_description = "token expired"

    def __init__(self, log_message: str = "", *, expired: bool = False) -> None:
        super().__init__(log_message)
        self.expired = expired
        if expired:
            self.description = self.expired_description

    def challenge(self) -> str:
        return (
            f'Bearer realm="{REALM}", error="{self.error}", '
            f'error_description="{self.description}"'
        )


class InsufficientScope(TokenError):
    """The token is valid but lacks the route's scope."""

    status_code = 403
    error = "insufficient_scope"
    description = "The access token does not have the required scope."

    def __init__(self, scope: str, log_message: str = "") -> None:
        super().__init__(log_message)
        self.scope = scope

    def challenge(self) -> str:
        return (
            f'Bearer realm="{REALM}", error="{self.error}", '
            f'error_description="{self.description}", scope="{self.scope}"'
        )


class NotFound(ApiError):
    """No such resource (or not one this subject may see)."""

    status_code = 404
    error = "not_found"
    description = "The resource does not exist."


class MethodNotAllowed(ApiError):
    """The route exists but not for this method."""

    status_code = 405
    error = "method_not_allowed"
    description = "The method is not allowed for this resource."


class PayloadTooLarge(ApiError):
    """The request body is over the endpoint's limit."""

    status_code = 413
    error = "payload_too_large"
    description = "The request body is too large."


class UnsupportedMediaType(ApiError):
    """The request body is not JSON."""

    status_code = 415
    error = "unsupported_media_type"
    description = "The request body must be application/json."


class TooManyRequests(ApiError):
    """A rate or concurrency limit was hit."""

    status_code = 429
    error = "too_many_requests"
    description = "Too many requests; retry later."


class TemporarilyUnavailable(ApiError):
    """A dependency (secret holder, revocation store) cannot answer right now."""

    status_code = 503
    error = "temporarily_unavailable"
    description = "The service is temporarily unavailable; retry later."


def store_unavailable(err: StoreUnavailable) -> TemporarilyUnavailable:
    """The one HTTP answer to a revocation store that cannot answer: fail closed, 503."""
    return TemporarilyUnavailable(
        f"revocation store unavailable: {err}", retry_after=STORE_RETRY_AFTER
    )


class UpstreamError(ApiError):
    """The upstream AI API failed; its body is never relayed."""

    status_code = 502
    error = "upstream_error"
    description = "The upstream service failed."
