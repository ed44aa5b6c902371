"""Who is calling: FastAPI dependencies that authenticate a bearer token and check its role.

401 (with ``WWW-Authenticate: Bearer``) for a missing or unknown token, 403 for a
role that may not do the action. A node without a tokens file (loopback only)
treats every caller as :data:`~.tokens.ANONYMOUS`.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from .http_errors import ApiError
from .tokens import ANONYMOUS, Credential

__all__ = ["authenticate", "requires"]


def authenticate(request: Request) -> Credential:
    """The caller's credential (raises 401 when a tokens file is in use and none matches)."""
    store = request.app.state.tokens
    if store is None:
        return ANONYMOUS
    credential = store.authenticate(request.headers.get("authorization"))
    if credential is None:
        missing = not request.headers.get("authorization")
        raise ApiError(401, "missing bearer token" if missing else "unknown bearer token",
                       code="unauthenticated", headers={"WWW-Authenticate": "Bearer"})
    return credential


def requires(action: str) -> Callable[[Request], Credential]:
    """A dependency that lets through only credentials whose role may do ``action``
    (ingest, evidence, read, admin)."""

    def check(request: Request) -> Credential:
        credential = authenticate(request)
        if not credential.may(action):
            raise ApiError(403, f"role {credential.role!r} may not {action}", code="forbidden")
        return credential

    check.__name__ = f"requires_{action}"
    return check
