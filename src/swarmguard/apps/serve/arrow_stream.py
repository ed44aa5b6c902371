"""Reading an Arrow IPC stream body without letting it grow past the body's own size.

An Arrow stream may carry compressed buffers (LZ4 / ZSTD, the ``BodyCompression`` of a
record batch) or dictionary batches: either can expand a small body into gigabytes
while it is being read (the body limit counts the compressed bytes). This reader
looks at each message's metadata before decoding it and refuses both (use
``Content-Encoding: gzip`` to compress a body: its decompressed size is bounded).
With plain buffers every column lives inside the body; ``validate(full=True)``
checks that the buffers the metadata declares are really there.
"""

from __future__ import annotations

from .http_errors import ApiError

__all__ = ["read_arrow_stream"]

_RECORD_BATCH = 3          # MessageHeader union: Schema = 1, DictionaryBatch = 2, RecordBatch = 3
_COMPRESSION_FIELD = 3     # RecordBatch table: length, nodes, buffers, compression, ...


def _u16(buf: bytes, pos: int) -> int:
    return int.from_bytes(buf[pos:pos + 2], "little")


def _u32(buf: bytes, pos: int) -> int:
    return int.from_bytes(buf[pos:pos + 4], "little")


def _field_offsets(buf: bytes, table: int) -> list[int]:
    """The vtable entries of the flatbuffer table at ``table`` (0: field absent)."""
    vtable = table - int.from_bytes(buf[table:table + 4], "little", signed=True)
    if not 0 <= vtable < len(buf) - 4:
        raise ValueError("vtable out of range")
    count = (_u16(buf, vtable) - 4) // 2
    return [_u16(buf, vtable + 4 + 2 * i) for i in range(max(count, 0))]


def _is_compressed_record_batch(metadata: bytes) -> bool:
    """Whether a record-batch message's flatbuffer metadata names a ``BodyCompression``."""
    root = _u32(metadata, 0)
    fields = _field_offsets(metadata, root)        # Message: version, header_type, header, bodyLength, ...
    if len(fields) < 3 or not fields[1] or not fields[2] or metadata[root + fields[1]] != _RECORD_BATCH:
        raise ValueError("not a record batch message")
    header = root + fields[2] + _u32(metadata, root + fields[2])
    batch_fields = _field_offsets(metadata, header)
    return len(batch_fields) > _COMPRESSION_FIELD and batch_fields[_COMPRESSION_FIELD] != 0


def _malformed(message: str) -> ApiError:
    return ApiError(400, message, code="malformed_body")


def read_arrow_stream(body: bytes):
    """The ``pyarrow.Table`` of an Arrow IPC stream body; 400 for an unreadable stream, a
    compressed record batch or a dictionary batch (module docstring)."""
    import pyarrow as pa
    import pyarrow.ipc

    try:
        reader = pa.ipc.MessageReader.open_stream(pa.py_buffer(body))
        first = reader.read_next_message()
        if first is None or first.type != "schema":
            raise _malformed("not an Arrow IPC stream: it does not start with a schema")
        schema = pa.ipc.read_schema(first)
        batches = []
        while True:
            try:
                message = reader.read_next_message()
            except StopIteration:
                break
            if message is None:
                break
            if message.type != "record batch":
                raise _malformed(f"Arrow {message.type} messages are not accepted (no dictionary columns)")
            try:
                compressed = _is_compressed_record_batch(message.metadata.to_pybytes())
            except (ValueError, IndexError):
                raise _malformed("not an Arrow IPC stream: unreadable record batch metadata") from None
            if compressed:
                raise _malformed("compressed Arrow IPC buffers are not accepted: send plain buffers, "
                                 "with Content-Encoding: gzip to compress the body")
            batch = pa.ipc.read_record_batch(message, schema)
            batch.validate(full=True)
            batches.append(batch)
        return pa.Table.from_batches(batches, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowException, OSError, ValueError) as exc:
        raise _malformed(f"not an Arrow IPC stream: {exc}") from None
