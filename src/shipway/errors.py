"""Shipway's one exception tree.

Every error Shipway raises on purpose is a :class:`ShipwayError` with a stable ``code``
(a short snake_case string that clients and scripts may rely on) and a one-sentence message.
Domain code raises these and knows nothing of HTTP; the HTTP face maps codes to statuses
(``shipway.api.errors``) and the CLI prints the message and exits non-zero.

    ShipwayError                    code
    ├── ConfigError                 config_error        settings or environment are wrong
    │   └── ManifestError           manifest_invalid    shipway.yaml fails (file:line: field)
    │   └── ExpressionError         expression_invalid  a rule or policy condition is not valid
    ├── InputError                  invalid_input       a file or argument is unusable
    │   └── FeedbackInvalid         feedback_invalid    labels that do not fit (fields)
    ├── ContractViolation           contract_violation  inputs break the contract (fields)
    ├── BadRequest                  bad_request         a body is not the expected shape
    ├── NotFound                    not_found           a named thing does not exist
    ├── Conflict                    conflict            the move does not fit the current state
    │   └── GateFailed              gate_failed         the version failed its evaluation gate
    ├── ModelError                  model_error         a model failed to load or predict
    │   ├── ArtifactIntegrityError  artifact_integrity  an artifact's sha256 is not the store's
    │   ├── ModelTimeout            model_timeout       no answer within the guard's timeout
    │   ├── UpstreamError           upstream_error      a model endpoint failed or is unreachable
    │   └── OutputInvalid           output_invalid      an answer broke the output checks
    ├── StoreError                  store_unavailable   the database cannot be read or written
    ├── Unavailable                 unavailable         not ready (starting, shutting down)
    │   ├── ModelUnavailable        model_unavailable   the model and every fallback failed
    │   └── Overloaded              overloaded          too much in flight: shed, retry later
    ├── Unauthorized                unauthorized        no credentials, or they are not valid
    ├── Forbidden                   forbidden           valid credentials without the role
    ├── ServiceStopped              service_stopped     the stop switch is on
    ├── RateLimited                 rate_limited        the caller's rate limit is used up
    ├── PayloadTooLarge             payload_too_large   the request body is over the limit
    ├── MethodNotAllowed            method_not_allowed  the route exists, not for this method
    └── InternalError               internal_error      a bug: the server log has the details

Errors that ask the caller to come back later carry ``retry_after`` (seconds), which the HTTP
face sends as a ``Retry-After`` header.
"""

from __future__ import annotations

from typing import Any


class ShipwayError(Exception):
    """Base of every error Shipway raises on purpose."""

    code = "shipway_error"
    retry_after: float | None = None

    def __init__(self, message: str, *, retry_after: float | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        if retry_after is not None:
            self.retry_after = retry_after

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        body.update({k: v for k, v in self.details.items() if v is not None})
        return body


class ConfigError(ShipwayError):
    code = "config_error"


class ManifestError(ConfigError):
    """The manifest does not validate. ``problems`` lists each as file:line: field: rule."""

    code = "manifest_invalid"

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message, problems=problems or None)
        self.problems = problems or []


class ExpressionError(ConfigError):
    code = "expression_invalid"


class InputError(ShipwayError):
    code = "invalid_input"


class FeedbackInvalid(InputError):
    """Labels that do not fit the output spec or name unknown decisions; nothing was stored."""

    code = "feedback_invalid"

    def __init__(self, message: str, fields: list[dict[str, Any]]) -> None:
        super().__init__(message, fields=fields)


class ContractViolation(ShipwayError):
    """Inputs break the contract; ``fields`` holds one dict per violation.

    Each violation has ``row``, ``field``, ``rule`` and, where they apply, ``value`` and
    ``expected``. Rules: ``unknown_field``, ``required``, ``type``, ``nullable``, ``min``, ``max``,
    ``category``.
    """

    code = "contract_violation"

    def __init__(self, message: str, fields: list[dict[str, Any]]) -> None:
        super().__init__(message, fields=fields)
        self.fields = fields


class BadRequest(ShipwayError):
    code = "bad_request"


class NotFound(ShipwayError):
    code = "not_found"


class Conflict(ShipwayError):
    code = "conflict"


class GateFailed(Conflict):
    code = "gate_failed"


class ModelError(ShipwayError):
    code = "model_error"


class ArtifactIntegrityError(ModelError):
    code = "artifact_integrity"


class ModelTimeout(ModelError):
    code = "model_timeout"
    retryable = True


class UpstreamError(ModelError):
    """A model endpoint failed. ``retryable``: connection errors, 429 and 5xx."""

    code = "upstream_error"

    def __init__(self, message: str, *, retryable: bool = False, **details: Any) -> None:
        super().__init__(message, **details)
        self.retryable = retryable


class OutputInvalid(ModelError):
    code = "output_invalid"


class StoreError(ShipwayError):
    code = "store_unavailable"


class Unavailable(ShipwayError):
    code = "unavailable"


class ModelUnavailable(Unavailable):
    """The model failed and no fallback step could answer; ``attempts`` says why each failed.

    ``logged_rows`` are positions of the request answered (and logged) before the rest failed;
    ``spent`` is what billed attempts at the failed positions cost."""

    code = "model_unavailable"
    retry_after = 1.0
    logged_rows: frozenset[int] = frozenset()
    spent: dict[int, Any] | None = None


class Overloaded(Unavailable):
    code = "overloaded"
    retry_after = 1.0


class RateLimited(ShipwayError):
    code = "rate_limited"


class Unauthorized(ShipwayError):
    code = "unauthorized"


class Forbidden(ShipwayError):
    code = "forbidden"


class ServiceStopped(Unavailable):
    code = "service_stopped"
    retry_after = 30.0


class PayloadTooLarge(ShipwayError):
    code = "payload_too_large"


class MethodNotAllowed(ShipwayError):
    code = "method_not_allowed"


class InternalError(ShipwayError):
    """An error Shipway did not expect (a bug); the message points to the server log."""

    code = "internal_error"


__all__ = [
    "ArtifactIntegrityError",
    "BadRequest",
    "ConfigError",
    "Conflict",
    "ContractViolation",
    "ExpressionError",
    "FeedbackInvalid",
    "Forbidden",
    "GateFailed",
    "InputError",
    "InternalError",
    "ManifestError",
    "MethodNotAllowed",
    "ModelError",
    "ModelTimeout",
    "ModelUnavailable",
    "NotFound",
    "OutputInvalid",
    "Overloaded",
    "PayloadTooLarge",
    "RateLimited",
    "ServiceStopped",
    "ShipwayError",
    "StoreError",
    "Unauthorized",
    "Unavailable",
    "UpstreamError",
]
