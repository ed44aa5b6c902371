"""Bearer-token credentials from a TOML file, stored as SHA-256 hashes, compared in constant time.

The file holds one ``[[token]]`` table per credential::

    [[token]]
    secret = "s3cret-ingest"      # or sha256 = "<hex of the SHA-256 of the secret>"
    role = "ingest"               # ingest | observer | read | admin | peer
    [[token]]
    secret = "s3cret-obs7"
    role = "observer"
    source = "observer-7"         # the source_node of every evidence this token posts

Roles: ``ingest`` posts behaviours (and spans); ``observer`` posts evidence as its
``source``; ``read`` only GETs; ``admin`` may do everything (evidence too, with a
``source``); ``peer`` is another node (reads, and posts what ``ingest`` posts).
A ``source`` may not start with ``serve:``: that prefix names a node's own detectors
(``serve:<region>:<population>``), whose evidence every node routes to one population.
"""

from __future__ import annotations

import hashlib
import hmac
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ...errors import InvalidInputError

__all__ = ["ROLES", "DETECTOR_SOURCE_PREFIX", "Credential", "TokenStore", "load_tokens", "ANONYMOUS"]

ROLES = ("ingest", "observer", "read", "admin", "peer")

# the source of a node's detectors' own evidence (``serve:<region>:<population>``): no token's
DETECTOR_SOURCE_PREFIX = "serve:"

# what each role may do: an action is "ingest" (behaviours, spans), "evidence", "read", "admin"
_ALLOWED = {
    "ingest": {"ingest"},
    "observer": {"evidence"},
    "read": {"read"},
    "admin": {"ingest", "evidence", "read", "admin"},
    "peer": {"ingest", "read"},
}


@dataclass(frozen=True)
class Credential:
    """An authenticated caller: its ``role`` and, for observers, its evidence ``source``."""

    role: str
    source: str | None = None
    name: str = ""

    def may(self, action: str) -> bool:
        """Whether this credential's role allows ``action`` (ingest, evidence, read, admin)."""
        return action in _ALLOWED[self.role]


# the caller of a node without a tokens file (loopback only): may do everything, as "local"
ANONYMOUS = Credential(role="admin", source="local", name="anonymous")


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


class TokenStore:
    """Credentials by the SHA-256 of their secret; :meth:`authenticate` reads a header.

    Every stored hash is compared with :func:`hmac.compare_digest` (no early exit,
    so the time taken says nothing about which hash came close).
    """

    def __init__(self, entries: list[tuple[bytes, Credential]]):
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, authorization: str | None) -> Credential | None:
        """The credential of an ``Authorization: Bearer <secret>`` header (None: missing or wrong)."""
        if not authorization:
            return None
        scheme, _, secret = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            return None
        digest = _digest(secret.strip())
        found = None
        for stored, credential in self._entries:
            if hmac.compare_digest(stored, digest) and found is None:
                found = credential
        return found


def load_tokens(path: str | Path) -> TokenStore:
    """Read a tokens file (module docstring); a malformed file raises ``InvalidInputError``
    naming the table at fault."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInputError(f"cannot read --tokens {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"--tokens {path} is not valid TOML: {exc}") from None
    tables = data.get("token")
    if not isinstance(tables, list) or not tables:
        raise InvalidInputError(f"--tokens {path} has no [[token]] tables")
    entries: list[tuple[bytes, Credential]] = []
    for i, table in enumerate(tables, 1):
        where = f"--tokens {path}, token {i}"
        if not isinstance(table, dict):
            raise InvalidInputError(f"{where}: not a table")
        unknown = set(table) - {"secret", "sha256", "role", "source", "name"}
        if unknown:
            raise InvalidInputError(f"{where}: unknown keys {sorted(unknown)}")
        role = table.get("role")
        if role not in ROLES:
            raise InvalidInputError(f"{where}: role must be one of {', '.join(ROLES)}, got {role!r}")
        if ("secret" in table) == ("sha256" in table):
            raise InvalidInputError(f"{where}: give exactly one of secret or sha256")
        if "secret" in table:
            if not isinstance(table["secret"], str) or not table["secret"].strip():
                raise InvalidInputError(f"{where}: secret must be a non-empty string")
            if not table["secret"].isascii() or not table["secret"].isprintable():
                # HTTP headers arrive as latin-1: a UTF-8 secret could never match
                raise InvalidInputError(f"{where}: secret must be printable ASCII (an HTTP header carries it)")
            digest = _digest(table["secret"].strip())
        else:
            try:
                digest = bytes.fromhex(str(table["sha256"]))
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise InvalidInputError(f"{where}: sha256 must be 64 hex digits")
        same = [j for j, (other, _) in enumerate(entries, 1) if hmac.compare_digest(other, digest)]
        if same:       # one secret, two roles: which one a request gets would be an accident of order
            raise InvalidInputError(f"{where}: the same secret as token {same[0]}; give each credential its own")
        source = table.get("source")
        if role == "observer" and not (isinstance(source, str) and source):
            raise InvalidInputError(f"{where}: an observer needs its source name (source = \"...\")")
        if source is not None and not (isinstance(source, str) and source):
            raise InvalidInputError(f"{where}: source must be a non-empty string")
        if source is not None and source.startswith(DETECTOR_SOURCE_PREFIX):
            # a node's detectors sign their own evidence serve:<region>:<population>, and every
            # node counts such a row in that population alone (peers.detector_population):
            # an observer posing as one would be routed, and trusted, as a detector
            raise InvalidInputError(f"{where}: source {source!r} starts with {DETECTOR_SOURCE_PREFIX!r}, "
                                    "which is reserved for the nodes' own detectors; choose another name")
        entries.append((digest, Credential(role=role, source=source, name=str(table.get("name", f"token {i}")))))
    return TokenStore(entries)
