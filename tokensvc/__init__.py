"""tokensvc: short-lived signed session tokens with a sealed upstream secret.

The public names below are what extensions (such as ``chatkit``) may use.
"""

from tokensvc.app import Extension, build_services, make_app
from tokensvc.auth import TokenAuthMixin
from tokensvc.claims import SESSION, TICKET, Claims, TokenType
from tokensvc.clients import RateLimiter
from tokensvc.config import Config, load_config
from tokensvc.errors import (
    ApiError,
    ConfigError,
    InvalidGrant,
    InvalidRequest,
    InvalidToken,
    NotFound,
    StoreUnavailable,
    TemporarilyUnavailable,
    TokenError,
    TokensvcError,
    TooManyRequests,
    UpstreamError,
)
from tokensvc.logs import ThrottledLog
from tokensvc.redacted import Secret
from tokensvc.redis_reasons import describe_redis_failure
from tokensvc.revocation.base import RevocationEntry, RevocationStore
from tokensvc.services import Services
from tokensvc.sessions import session_response, start_session
from tokensvc.web import BaseHandler

__version__ = "0.1.0"

__all__ = [
    "SESSION",
    "TICKET",
    "ApiError",
    "BaseHandler",
    "Claims",
    "Config",
    "ConfigError",
    "Extension",
    "InvalidGrant",
    "InvalidRequest",
    "InvalidToken",
    "NotFound",
    "RateLimiter",
    "RevocationEntry",
    "RevocationStore",
    "Secret",
    "Services",
    "StoreUnavailable",
    "TemporarilyUnavailable",
    "ThrottledLog",
    "TokenAuthMixin",
    "TokenError",
    "TokenType",
    "TokensvcError",
    "TooManyRequests",
    "UpstreamError",
    "__version__",
    "build_services",
    "describe_redis_failure",
    "load_config",
    "make_app",
    "session_response",
    "start_session",
]
