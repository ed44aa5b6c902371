"""``ApiError``: a refusal with its HTTP status, answered as ``{"error": "<one line>"}``."""

from __future__ import annotations

__all__ = ["ApiError", "one_line"]


def one_line(message: object, limit: int = 500) -> str:
    """``message`` as one line of at most ``limit`` characters (an error body is one line)."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ApiError(Exception):
    """A request refused with ``status`` and a one-line ``message``.

    ``code`` names the refusal in ``/metrics`` (``swarmguard_errors_total{code=...}``);
    ``headers`` go with the answer (``Retry-After`` on 429/503, ``WWW-Authenticate`` on 401).
    """

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(one_line(message))
        self.status = status
        self.message = one_line(message)
        self.code = code or str(status)
        self.headers = headers or {}
