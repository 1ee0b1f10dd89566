"""BaseHandler: JSON errors from one place, security headers, CORS, masked logs.

Every handler of tokensvc and of its extensions derives from :class:`BaseHandler`. Errors
are raised as :class:`~tokensvc.errors.ApiError` and rendered only in :meth:`write_error`,
which also sets the ``WWW-Authenticate`` challenge (Tornado's ``send_error`` clears headers
first, so it must be set there).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import tornado.web
from tornado.http1connection import HTTP1Connection
from tornado.httputil import HTTPHeaders

from tokensvc.errors import (
    ApiError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from tokensvc.logs import mask_uri
from tokensvc.services import Services

__all__ = [
    "MAX_BODY_BYTES",
    "BaseHandler",
    "NotFoundHandler",
    "OversizedBodyHandler",
    "declares_oversized_body",
    "origin_allowed",
]

log = logging.getLogger("tokensvc.web")

# The largest body any route reads. It is above every endpoint's own limit (64 KiB for
# /sessions, a chat message's size for ChatKit), so those answer 413 themselves; a body
# declared larger is answered 413 by OversizedBodyHandler before a byte of it is read.
MAX_BODY_BYTES = 1024 * 1024
CORS_METHODS = "GET, HEAD, POST, DELETE, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, Last-Event-ID"
CORS_EXPOSE = "WWW-Authenticate, Retry-After"
CORS_MAX_AGE = "600"
_STATUS_CODES = {
    400: "invalid_request",
    401: "invalid_token",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    502: "upstream_error",
    503: "temporarily_unavailable",
}


def origin_allowed(origin: str, allowed: tuple[str, ...]) -> bool:
    """Exact origins, or ``scheme://*`` for any host of that scheme; never ``null``."""
    if not origin or origin == "null":
        return False
    for pattern in allowed:
        if pattern.endswith("://*"):
            scheme = pattern[: -len("*")]
            rest = origin[len(scheme) :]
            # The scheme must match exactly and what follows must be a bare host: no
            # path, no whitespace. "http://vscode-webview.evil.com" has scheme http.
            if (
                origin.startswith(scheme)
                and rest
                and "/" not in rest
                and not any(c.isspace() for c in rest)
            ):
                return True
        elif origin == pattern:
            return True
    return False


class BaseHandler(tornado.web.RequestHandler):
    """Common behaviour: headers, CORS, JSON bodies and the single error renderer."""

    services: Services

    def initialize(self, **kwargs: Any) -> None:
        self.services = self.settings["tokensvc"]

    def set_default_headers(self) -> None:
        # Called again after clear() in send_error, so error answers keep these too.
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Type", "application/json; charset=utf-8")
        origin = self.request.headers.get("Origin")
        if origin is not None:
            self.add_header("Vary", "Origin")
            services: Services = self.settings["tokensvc"]
            if origin_allowed(origin, services.config.server.cors_origins):
                self.set_header("Access-Control-Allow-Origin", origin)
                self.set_header("Access-Control-Expose-Headers", CORS_EXPOSE)

    def options(self, *args: Any, **kwargs: Any) -> None:
        """CORS preflight: methods and headers only for an allowed origin."""
        if "Access-Control-Allow-Origin" in self._headers:
            self.set_header("Access-Control-Allow-Methods", CORS_METHODS)
            self.set_header("Access-Control-Allow-Headers", CORS_HEADERS)
            self.set_header("Access-Control-Max-Age", CORS_MAX_AGE)
        self.clear_header("Content-Type")
        self.set_status(204)
        self.finish()

    async def head(self, *args: Any, **kwargs: Any) -> None:
        """HEAD wherever GET is: GET's status and headers, without the body.

        It runs the route's ``get`` (after the same ``prepare``, so the same checks):
        Tornado sends the headers, Content-Length and ETag included, and drops the body of a
        HEAD answer. A GET that does more than answer (an event stream) overrides this.
        """
        if "GET" not in self._allowed_methods():
            raise tornado.web.HTTPError(405)
        result = self.get(*args, **kwargs)
        if result is not None:
            await result

    def no_store(self) -> None:
        """For every response that carries a token, ticket or secret."""
        self.set_header("Cache-Control", "no-store")
        self.set_header("Pragma", "no-cache")

    def write_json(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(body, separators=(",", ":")))

    def json_body(self, *, max_bytes: int = 64 * 1024, optional: bool = False) -> dict[str, Any]:
        """The request body as a JSON object: 415 if not JSON, 413 if too big, 400 if bad."""
        body = self.request.body
        if optional and not body:
            return {}
        content_type = self.request.headers.get("Content-Type", "")
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type != "application/json" and not media_type.endswith("+json"):
            raise UnsupportedMediaType(f"content type {media_type or 'missing'}")
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"body of {len(body)} bytes")
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError) as err:
            raise InvalidRequest("body is not valid JSON") from err
        if not isinstance(parsed, dict):
            raise InvalidRequest("body is not a JSON object")
        return parsed

    # -- errors: the one place that renders them --------------------------------------

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            self.set_status(exc.status_code)
            for name, value in exc.response_headers().items():
                self.set_header(name, value)
            body = {"error": exc.error, "error_description": exc.description}
        else:
            if isinstance(exc, tornado.web.HTTPError):
                status_code = exc.status_code
            if status_code not in _STATUS_CODES:
                status_code = 500 if status_code >= 500 else 400
            self.set_status(status_code)
            if status_code == 405:
                self.set_header("Allow", ", ".join(self._allowed_methods()))
            body = {
                "error": _STATUS_CODES.get(status_code, "server_error"),
                "error_description": _fixed_description(status_code),
            }
        if self.get_status() in (429, 503) and "Retry-After" not in self._headers:
            self.set_header("Retry-After", "1")
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(body, separators=(",", ":")))

    def _allowed_methods(self) -> list[str]:
        cls = type(self)
        base = tornado.web.RequestHandler
        defined = [
            m
            for m in self.SUPPORTED_METHODS
            if getattr(cls, m.lower(), None) is not getattr(base, m.lower(), None)
        ]
        # Every handler inherits head() from BaseHandler; it answers only where GET does.
        if "GET" not in defined:
            return [m for m in defined if m != "HEAD"]
        return defined

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # Expected failures get one line with their log_message (written to be free of
        # credentials); the request summary is masked. Tornado's default would log
        # repr(self.request), whose uri may hold an access_token.
        if isinstance(value, ApiError):
            level = logging.WARNING if value.status_code >= 500 else logging.INFO
            log.log(
                level,
                "%d %s: %s (%s)",
                value.status_code,
                value.error,
                value.log_message or value.error,
                self._request_summary(),
            )
        elif isinstance(value, tornado.web.HTTPError):
            log.info("%d %s", value.status_code, self._request_summary())
        else:
            log.error(
                "uncaught %s (%s)",
                getattr(typ, "__name__", "exception"),
                self._request_summary(),
                exc_info=(typ, value, tb),
            )

    def _request_summary(self) -> str:
        return f"{self.request.method} {mask_uri(self.request.uri or '')}"


def _fixed_description(status_code: int) -> str:
    descriptions = {
        400: "The request is invalid.",
        401: "Authentication is required.",
        403: "Forbidden.",
        404: NotFound.description,
        405: MethodNotAllowed.description,
        413: PayloadTooLarge.description,
        415: UnsupportedMediaType.description,
        429: "Too many requests; retry later.",
        502: "The upstream service failed.",
        503: "The service is temporarily unavailable; retry later.",
    }
    return descriptions.get(status_code, "Internal server error.")


class NotFoundHandler(BaseHandler):
    """Every unknown path: a JSON 404 whatever the method."""

    def prepare(self) -> None:
        if self.request.method == "OPTIONS":
            return
        raise NotFound("no route")


@tornado.web.stream_request_body
class OversizedBodyHandler(BaseHandler):
    """Answers a request whose declared body is over MAX_BODY_BYTES, whatever the route.

    It streams (so it runs as soon as the headers are in, without buffering anything) and
    lets the connection accept the declared size, so that what the client gets is this JSON
    413 rather than Tornado's bare 400; the connection closes after the answer, since the
    body was never read.
    """

    def prepare(self) -> None:
        declared = int(self.request.headers.get("Content-Length", "0"))
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            connection.set_max_body_size(declared)
        raise PayloadTooLarge(f"declared body of {declared} bytes")

    def data_received(self, chunk: bytes) -> None:
        return None  # never kept: the answer is already decided


def declares_oversized_body(headers: HTTPHeaders) -> bool:
    """Whether the request announces a body over MAX_BODY_BYTES."""
    declared = headers.get("Content-Length", "").strip()
    return declared.isdigit() and int(declared) > MAX_BODY_BYTES
