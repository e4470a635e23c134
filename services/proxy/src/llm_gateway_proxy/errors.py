"""Errors the gateway itself produces, and their one rendering as OpenAI error JSON.

    GatewayError                      500 api_error
    ├── InvalidRequest                400 invalid_request_error  (bad JSON, path, missing model...)
    │   └── UnsupportedByProvider     400 (no target of the model can serve this API)
    ├── HTTPStatusError               any other status Starlette raises (408, 411, 415, ...)
    ├── AuthenticationFailed          401 authentication_error
    ├── PermissionDenied              403 permission_error        (model or tenant not allowed)
    ├── RateLimited                   429 rate_limit_error        (with Retry-After, x-ratelimit-*)
    ├── AuthUnavailable               503 api_error
    ├── NotFound                      404 invalid_request_error
    │   └── ModelNotFound             404 model_not_found         (no route for the model)
    ├── MethodNotAllowed              405 invalid_request_error
    ├── RequestTooLarge               413 invalid_request_error
    ├── ShuttingDown                  503 api_error
    ├── Overloaded                    503 api_error               (MAX_IN_FLIGHT, with Retry-After)
    ├── RequestTimeout                408 invalid_request_error   (body not sent in time)
    ├── UpstreamUnreachable           502 api_error
    │   ├── UpstreamIncomplete        502 api_error  (the body was cut off mid-way)
    │   ├── UpstreamMalformed         502 api_error  (not the provider's format)
    │   ├── UpstreamStreamError       502 api_error  (an error event before any content)
    │   └── UpstreamMisconfigured     502 api_error  (every provider refused our key/model)
    └── UpstreamTimeout               504 api_error

On the Anthropic Messages endpoint (and for clients that send `anthropic-version`) the same
errors render in Anthropic's shape, `{"type":"error","error":{"type","message"}}`, with the
type Anthropic gives that status (`anthropic_type`) and 503 as Anthropic's 529 overloaded.

Status, type, code and the event's `outcome` (`gateway_error`, or `upstream_error` when the
provider is at fault) are class attributes: a status is never inferred from message text.
Upstream 4xx/5xx answers are not GatewayErrors; they pass through untouched.
"""

from __future__ import annotations

from typing import ClassVar

import orjson

from llm_gateway_common.events import Outcome


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    code: ClassVar[str | None] = "internal_error"
    outcome: ClassVar[Outcome] = "gateway_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        # Headers of this answer in particular (the router's X-LLM-Attempts, x-should-retry).
        self.extra_headers: list[tuple[bytes, bytes]] = headers or []

    def headers(self) -> list[tuple[bytes, bytes]]:
        """Extra response headers this error carries (Retry-After, ...)."""
        return []

    @property
    def anthropic_status(self) -> int:
        """The status on the Anthropic face: a 503 (overloaded, shutting down, Redis away) is
        Anthropic's 529, which its SDKs and Claude Code retry as overloaded."""
        return 529 if self.status == 503 else self.status

    def anthropic_body(self, request_id: str | None = None) -> bytes:
        """The Anthropic error object, as the anthropic SDKs parse it."""
        body: dict[str, object] = {
            "type": "error",
            "error": {"type": anthropic_type(self.anthropic_status), "message": self.message},
        }
        if request_id is not None:
            body["request_id"] = request_id
        return orjson.dumps(body)

    def body(self) -> bytes:
        """The OpenAI error object, as the SDKs parse it."""
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "param": self.param,
                    "code": self.code,
                }
            }
        )


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidJSON(InvalidRequest):
    code = "invalid_json"


class MissingParameter(InvalidRequest):
    code = "missing_required_parameter"


class InvalidPath(InvalidRequest):
    code = "invalid_path"


class HeaderNotAllowed(InvalidRequest):
    code = "invalid_header"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class ModelNotAllowed(PermissionDenied):
    code = "model_not_allowed"


class TenantNotAllowed(PermissionDenied):
    code = "tenant_not_allowed"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, limit: str, limit_value: int, reset_seconds: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.limit_value = limit_value
        self.reset_seconds = reset_seconds

    def headers(self) -> list[tuple[bytes, bytes]]:
        kind = b"requests" if self.limit == "requests" else b"tokens"
        reset = str(max(self.reset_seconds, 1)).encode()
        return [
            (b"retry-after", reset),
            (b"x-ratelimit-limit-" + kind, str(self.limit_value).encode()),
            (b"x-ratelimit-remaining-" + kind, b"0"),
            (b"x-ratelimit-reset-" + kind, reset + b"s"),
        ]


class BudgetExhausted(RateLimited):
    code = "budget_exceeded"

    def headers(self) -> list[tuple[bytes, bytes]]:
        """A total budget never resets (reset 0): no `Retry-After`, so SDKs do not retry in 1 s
        what can never succeed."""
        headers = super().headers()
        if self.limit == "spend":  # a dollar budget: no token header says anything true of it
            headers = [h for h in headers if h[0] == b"retry-after"]
        if self.reset_seconds > 0:
            return headers
        return [h for h in headers if h[0] not in (b"retry-after", b"x-ratelimit-reset-tokens")]


class AuthUnavailable(GatewayError):
    status = 503
    type = "api_error"
    code = "auth_unavailable"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "unknown_url"


class ModelNotFound(NotFound):
    code = "model_not_found"


class UnsupportedByProvider(InvalidRequest):
    code = "unsupported_by_provider"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class ShuttingDown(GatewayError):
    status = 503
    type = "api_error"
    code = "shutting_down"


class Overloaded(GatewayError):
    status = 503
    type = "api_error"
    code = "overloaded"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", b"1")]


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class UpstreamUnreachable(GatewayError):
    status = 502
    type = "api_error"
    code = "upstream_unreachable"
    outcome = "upstream_error"


class UpstreamIncomplete(UpstreamUnreachable):
    code = "upstream_incomplete"


class UpstreamMalformed(UpstreamUnreachable):
    """The provider answered 200 with something that is not its API's format."""

    code = "upstream_malformed_response"


class UpstreamStreamError(UpstreamUnreachable):
    code = "upstream_stream_error"


class UpstreamMisconfigured(UpstreamUnreachable):
    """Every provider refused the gateway's own key or model (401/403/404): said in the
    gateway's words, so the client never takes a provider's "invalid API key" for its own."""

    code = "upstream_misconfigured"


class UpstreamTimeout(GatewayError):
    status = 504
    type = "api_error"
    code = "upstream_timeout"
    outcome = "upstream_error"


class HTTPStatusError(GatewayError):
    """A status the web framework decided (Starlette's HTTPException), rendered like ours."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status  # type: ignore[misc]
        self.type = "invalid_request_error" if status < 500 else "api_error"  # type: ignore[misc]
        self.code = f"http_{status}"  # type: ignore[misc]


# Anthropic's error `type` for each status it answers with (their errors page, REFERENCE.md s. 9).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_type(status: int) -> str:
    """Anthropic's error type for a status; others by class (4xx invalid request, 5xx api)."""
    found = _ANTHROPIC_TYPES.get(status)
    if found is not None:
        return found
    return "invalid_request_error" if status < 500 else "api_error"


def anthropic_client(path: str, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether errors to this request take Anthropic's shape: the Messages endpoints, and any
    request from a client that speaks Anthropic's API (it sends `anthropic-version`)."""
    if path.startswith("/v1/messages"):
        return True
    return any(name == b"anthropic-version" for name, _ in headers)
