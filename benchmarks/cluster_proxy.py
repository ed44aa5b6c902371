"""A fault-injecting TCP proxy for the cluster harness: one per directed peer link, on loopback.

Node A's ``--peers`` entry for node B points at the proxy ``A->B``, which forwards to
B's port. Everything A sends B (its delta pushes, and B's answers to them) crosses
that proxy alone, so cutting ``A->B`` while ``B->A`` stays open is a one-way
partition: B's pushes still reach A, A's never reach B.

Each :class:`LinkProxy` is controlled in process, from any thread:

- ``pass`` (default): bytes flow, after ``delay_s`` per chunk when set;
- ``drop``: every open connection is reset at once and new ones are accepted and
  reset (the sender sees a refused / reset connection at once);
- ``blackhole``: connections are accepted, bytes read and thrown away, nothing is
  forwarded or answered (the sender waits for its timeout, as behind a firewall
  that drops packets).

All proxies of a :class:`ProxyHub` share one asyncio loop on one daemon thread;
:meth:`ProxyHub.close` stops it (bounded: it waits at most ``timeout`` seconds).
Standard library only.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from dataclasses import dataclass

__all__ = ["LinkProxy", "ProxyHub", "MODES"]

MODES = ("pass", "drop", "blackhole")
_CHUNK = 1 << 16


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0): the peer sees the connection reset, not a clean end."""
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


@dataclass
class LinkCounters:
    """Bytes forwarded each way, connections seen and reset."""

    bytes_up: int = 0           # sender -> target (requests)
    bytes_down: int = 0         # target -> sender (answers)
    connections: int = 0
    resets: int = 0


class LinkProxy:
    """One directed link's proxy (module docstring); made by :meth:`ProxyHub.add`."""

    def __init__(self, hub: ProxyHub, name: str, target_port: int):
        self.hub, self.name, self.target_port = hub, name, int(target_port)
        self.mode = "pass"
        self.delay_s = 0.0
        self.counters = LinkCounters()
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---------------------------------------------------------------- control (any thread)
    def set(self, mode: str = "pass", delay_ms: float = 0.0) -> None:
        """Switch the link to ``mode`` (``pass`` / ``drop`` / ``blackhole``), with ``delay_ms`` per chunk."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        self.hub.call(self._set, mode, delay_ms / 1000.0)

    def _set(self, mode: str, delay_s: float) -> None:
        self.mode, self.delay_s = mode, delay_s
        if mode == "drop":
            for pair in list(self._open):
                self._abort(pair)

    def _abort(self, pair) -> None:
        self.counters.resets += 1
        for w in pair:
            if w is not None:
                _reset(w)
        self._open.discard(pair)

    # ---------------------------------------------------------------- the loop's side
    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for pair in list(self._open):
            self._abort(pair)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counters.connections += 1
        if self.mode == "drop":
            self.counters.resets += 1
            _reset(writer)
            return
        if self.mode == "blackhole":
            pair = (writer, None)
            self._open.add(pair)
            try:
                while await reader.read(_CHUNK):       # swallow until the sender gives up
                    pass
            except (ConnectionError, OSError):
                pass
            finally:
                self._open.discard(pair)
                writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.target_port), timeout=2.0)
        except (TimeoutError, OSError):        # the target is down: so is the link
            self.counters.resets += 1
            _reset(writer)
            return
        pair = (writer, up_writer)
        self._open.add(pair)
        try:
            await asyncio.gather(self._pump(reader, up_writer, "up", pair),
                                 self._pump(up_reader, writer, "down", pair))
        finally:
            if pair in self._open:
                self._open.discard(pair)
                for w in pair:
                    w.transport.abort()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, direction: str, pair) -> None:
        try:
            while True:
                data = await src.read(_CHUNK)
                if not data:
                    break
                if self.mode == "blackhole":
                    continue                            # thrown away: the other side waits
                if self.mode == "drop" or pair not in self._open:
                    break
                if self.delay_s > 0:
                    await asyncio.sleep(self.delay_s)
                    if pair not in self._open:
                        break
                dst.write(data)
                await dst.drain()
                if direction == "up":
                    self.counters.bytes_up += len(data)
                else:
                    self.counters.bytes_down += len(data)
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            if pair in self._open:                     # one side ended: end the connection
                self._open.discard(pair)
                for w in pair:
                    if w is not None:
                        w.transport.abort()


class ProxyHub:
    """The proxies' loop thread and their registry (module docstring)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.proxies: dict[str, LinkProxy] = {}
        self._thread = threading.Thread(target=self.loop.run_forever, name="cluster-proxies", daemon=True)
        self._thread.start()

    def call(self, fn, *args, timeout: float = 10.0):
        """Run ``fn(*args)`` (a plain function or a coroutine function) on the loop; its result."""
        async def run():
            out = fn(*args)
            return await out if asyncio.iscoroutine(out) else out
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def add(self, name: str, target_port: int) -> LinkProxy:
        """A new proxy ``name`` forwarding to ``127.0.0.1:target_port``, listening on a free port."""
        if name in self.proxies:
            raise ValueError(f"proxy {name!r} exists")
        proxy = LinkProxy(self, name, target_port)
        self.call(proxy._start)
        self.proxies[name] = proxy
        return proxy

    def set_all(self, mode: str = "pass", delay_ms: float = 0.0) -> None:
        for proxy in self.proxies.values():
            proxy.set(mode, delay_ms)

    def close(self, timeout: float = 10.0) -> None:
        try:
            for proxy in self.proxies.values():
                self.call(proxy._stop, timeout=timeout)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self.loop.close()
