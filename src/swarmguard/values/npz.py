"""Bytes for a state that is a dict of arrays: an ``.npz`` archive, never pickle.

Every mergeable value (moments, exact sums, registers, replicas, a resolver's
checkpoint) serialises through these two functions, so a region, an actor, a
checkpoint and a replica travel the same way.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np

from ..errors import InvalidInputError

__all__ = ["dict_to_bytes", "dict_from_bytes"]


def dict_to_bytes(state: Mapping[str, np.ndarray]) -> bytes:
    """Serialise a dict of arrays.

    >>> import numpy as np
    >>> dict_from_bytes(dict_to_bytes({"a": np.arange(3)}), "example")["a"].tolist()
    [0, 1, 2]
    """
    buf = io.BytesIO()
    np.savez(buf, **state)
    return buf.getvalue()


def dict_from_bytes(data: bytes, what: str) -> dict[str, np.ndarray]:
    """Inverse of :func:`dict_to_bytes`; corrupt input is an ``InvalidInputError`` naming ``what``."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile/ValueError/OSError on corrupt input
        raise InvalidInputError(f"bytes are not a serialised {what}: {exc}") from exc
