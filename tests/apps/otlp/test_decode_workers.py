"""DecodeWorkers: the same columns and errors as in-thread decoding, a dead worker replaced, none orphaned."""

from __future__ import annotations

import gzip
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("opentelemetry.proto")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

from swarmguard.apps.otlp.decode import decode_export_request, encode_otlp_json  # noqa: E402
from swarmguard.apps.otlp.decode_workers import DecodeWorkers  # noqa: E402
from swarmguard.apps.otlp.fleet_model import make_fleet  # noqa: E402
from swarmguard.apps.otlp.spans import SpanColumns, span_columns  # noqa: E402
from swarmguard.apps.otlp.synthetic import window_requests  # noqa: E402
from swarmguard.apps.serve.http_errors import ApiError  # noqa: E402
from swarmguard.errors import BodyTooLargeError, MalformedBodyError, UnsupportedMediaTypeError  # noqa: E402

PB, JSON = "application/x-protobuf", "application/json"
LIMIT = 1 << 20


@pytest.fixture(scope="module")
def workers():
    pool = DecodeWorkers(2)
    pool.wait_ready()
    yield pool
    pool.close()


def _attr(target, key, **value):
    kind, v = next(iter(value.items()))
    setattr(target.attributes.add(key=key).value, kind, v)


def _awkward_request(odd_id: bool = True) -> bytes:
    """Spans that exercise every branch of span_columns: refused spans (no agent; token counts
    that are no counts), fallbacks, unicode names, flags, missing times, and with ``odd_id`` a
    5-byte span id (which the OTLP JSON encoding cannot carry)."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    _attr(rs.resource, "service.name", string_value="поддержка")
    _attr(rs.resource, "service.instance.id", string_value="instance-7")      # the fallback agent
    spans = rs.scope_spans.add().spans
    cases = [
        {"gen_ai.agent.id": "агент-1", "gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 812,
         "gen_ai.request.model": "模型-4o"},
        {"gen_ai.agent.id": "агент-1", "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "工具🔧"},
        {"gen_ai.operation.name": "invoke_agent"},                                     # instance-7
        {"gen_ai.agent.id": "a-2", "gen_ai.usage.input_tokens": -5},                   # bad count
        {"gen_ai.agent.id": "a-2", "gen_ai.usage.output_tokens": 2 ** 53 + 1},         # bad count
        {"gen_ai.agent.id": "a-2", "gen_ai.usage.input_tokens": "9007199254740993"},   # bad count
        {"gen_ai.agent.id": "a-2", "gen_ai.usage.input_tokens": "abc"},                # NaN: kept
        {"gen_ai.agent.id": "a-2", "gen_ai.usage.output_tokens": 12.5, "error.type": "timeout"},
        {"gen_ai.agent.id": "a-3", "gen_ai.usage.output_tokens": math.inf},            # bad count
    ]
    for i, attrs in enumerate(cases):
        span = spans.add(name=f"s{i}", start_time_unix_nano=0 if i == 2 else 10 ** 18 + i,
                         end_time_unix_nano=10 ** 18 + 10 ** 9 * i,
                         span_id=bytes([i + 1]) * (5 if i == 1 and odd_id else 8))
        for key, value in attrs.items():
            kind = {int: "int_value", float: "double_value", str: "string_value"}[type(value)]
            _attr(span, key, **{kind: value})
    reasons = spans.add(name="filtered", span_id=b"\x09" * 8, end_time_unix_nano=5)
    _attr(reasons, "gen_ai.agent.id", string_value="a-3")
    array = reasons.attributes.add(key="gen_ai.response.finish_reasons").value.array_value
    array.values.add().string_value = "content_filter"
    array.values.add().string_value = "length"
    reasons.status.code = 2
    orphans = req.resource_spans.add().scope_spans.add().spans            # no resource agent: refused
    orphans.add(name="nobody")
    orphans.add(name="nobody either", span_id=b"\x01" * 8)
    return req.SerializeToString()


def _assert_same_columns(got: SpanColumns, want: SpanColumns) -> None:
    for name in ("agent", "cohort", "operation", "tool", "duration_s", "input_tokens", "output_tokens", "error",
                 "content_filter", "length", "span_id", "start_s"):
        a, b = getattr(got, name), getattr(want, name)
        if b is None:
            assert a is None, name
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)        # NaN equals NaN here
    assert got.agents == want.agents and got.cohorts == want.cohorts and got.tools == want.tools
    assert (got.rejected, got.bad_tokens) == (want.rejected, want.bad_tokens)


def _in_thread(body: bytes, content_type: str = PB, content_encoding: str | None = None) -> SpanColumns:
    return span_columns(decode_export_request(body, content_type, content_encoding, LIMIT).request)


def test_workers_columns_equal_in_thread_span_columns_on_the_same_bodies(workers):
    awkward = _awkward_request()
    fleet = window_requests(make_fleet(60, 3, 0), np.random.default_rng(5))[:3]
    bodies = [(awkward, PB, None), (gzip.compress(awkward), PB, "gzip"),
              (encode_otlp_json(ExportTraceServiceRequest.FromString(_awkward_request(odd_id=False))), JSON, None),
              *((b, PB, None) for b in fleet)]
    for body, content_type, content_encoding in bodies:
        want = _in_thread(body, content_type, content_encoding)
        _assert_same_columns(workers.columns(body, content_type, content_encoding, LIMIT), want)
    want = _in_thread(awkward)
    assert want.rejected == 2 and want.bad_tokens == 4 and "工具🔧" in want.tools      # the cases are exercised
    assert "instance-7" in want.agents and bool(want.content_filter.any()) and bool(want.length.any())


@pytest.mark.parametrize(("body", "content_type", "content_encoding", "error"), [
    (b"\x0a\x05junk", PB, None, MalformedBodyError),
    (b"{not json", JSON, None, MalformedBodyError),
    (b"\x1f\x8b not gzip at all", PB, "gzip", MalformedBodyError),
    (gzip.compress(b"\x00" * (LIMIT + 1)), PB, "gzip", BodyTooLargeError),       # a small gzip bomb
    (b"", PB, "br", UnsupportedMediaTypeError),
], ids=["protobuf", "json", "gzip", "gzip-bomb", "encoding"])
def test_a_body_refused_in_the_worker_raises_what_in_thread_decoding_raises(workers, body, content_type,
                                                                         content_encoding, error):
    with pytest.raises(error) as in_thread:
        _in_thread(body, content_type, content_encoding)
    with pytest.raises(error) as in_worker:
        workers.columns(body, content_type, content_encoding, LIMIT)
    assert str(in_worker.value) == str(in_thread.value)
    if error is BodyTooLargeError:
        assert in_worker.value.limit == LIMIT
    good = _awkward_request()                      # the worker serves on after a refusal
    _assert_same_columns(workers.columns(good, PB, None, LIMIT), _in_thread(good))


def test_a_killed_worker_answers_503_retry_after_and_is_replaced():
    pool = DecodeWorkers(1)
    try:
        pool.wait_ready()
        (pid,) = pool.pids
        os.kill(pid, signal.SIGKILL)
        body = _awkward_request()
        with pytest.raises(ApiError) as lost:
            pool.columns(body, PB, None, LIMIT)
        assert lost.value.status == 503 and lost.value.headers["Retry-After"] == "1"
        assert lost.value.code == "decode_worker_lost"
        assert pool.replaced == 1 and len(pool.pids) == 1 and pool.pids[0] != pid
        _assert_same_columns(pool.columns(body, PB, None, LIMIT), _in_thread(body))
    finally:
        pool.close()


def test_close_stops_the_workers_and_later_calls_answer_503():
    pool = DecodeWorkers(2)
    pool.wait_ready()
    processes = [w.process for w in pool._workers]
    pool.close()
    assert all(p.returncode is not None for p in processes)
    with pytest.raises(ApiError) as closed:
        pool.columns(_awkward_request(), PB, None, LIMIT)
    assert closed.value.status == 503


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"     # exited, not yet reaped
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_a_worker_exits_when_its_node_is_killed_with_sigkill():
    src = os.path.dirname(os.path.dirname(__import__("swarmguard").__file__))
    code = (f"import sys, time; sys.path.insert(0, {src!r})\n"
            "from swarmguard.apps.otlp.decode_workers import DecodeWorkers\n"
            "pool = DecodeWorkers(1); pool.wait_ready(); print(pool.pids[0], flush=True); time.sleep(60)")
    node = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(node.stdout.readline())
        assert not _gone(worker)
        node.kill()                                # SIGKILL: the node runs no cleanup at all
        node.wait(10)
        deadline = time.monotonic() + 10
        while not _gone(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(worker)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait(10)


@pytest.mark.parametrize("count", [1, 2])
def test_requests_from_many_threads_at_once_each_get_their_own_columns(count):
    from concurrent.futures import ThreadPoolExecutor

    bodies = window_requests(make_fleet(60, 3, 0), np.random.default_rng(7))[:6]
    bodies += [b"\x0a\x05junk", _awkward_request()]          # a refusal among them keeps the order
    pool = DecodeWorkers(count)
    try:
        pool.wait_ready()

        def one(i: int):
            body = bodies[i % len(bodies)]
            try:
                return i, pool.columns(body, PB, None, LIMIT)
            except MalformedBodyError as exc:
                return i, exc

        with ThreadPoolExecutor(6) as threads:
            results = list(threads.map(one, range(4 * len(bodies))))
    finally:
        pool.close()
    for i, got in results:
        body = bodies[i % len(bodies)]
        if body == b"\x0a\x05junk":
            assert isinstance(got, MalformedBodyError)
        else:
            _assert_same_columns(got, _in_thread(body))


def _pipelined_then_killed(pool: DecodeWorkers, bodies: list[bytes], in_last_send=None) -> dict[int, object]:
    """Stop the pool's one worker, write ``bodies`` to it from one thread each (each one's
    turn taken in order: ``sent``), SIGKILL it; each thread's result (columns or exception).

    ``in_last_send``: an Event the caller's socket sets once the last body's write has begun;
    the kill waits for it too (``sent`` counts a turn before its write starts: a kill right
    after it can make that write fail at once, before the body reaches the socket)."""
    import threading

    (worker,) = pool._workers
    os.kill(worker.pid, signal.SIGSTOP)          # it takes no request out of its socket
    results: dict[int, object] = {}

    def one(i: int) -> None:
        try:
            results[i] = pool.columns(bodies[i], PB, None, 1 << 26)
        except Exception as exc:                 # noqa: BLE001  (the test looks at which)
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for i, thread in enumerate(threads):
        thread.start()
        deadline = time.monotonic() + 10
        while worker.sent <= i and time.monotonic() < deadline:      # written in this order
            time.sleep(0.005)
        assert worker.sent > i, f"request {i} never took its turn to be written"
    if in_last_send is not None:
        assert in_last_send.wait(10), "the last body's write never began"
    os.kill(worker.pid, signal.SIGKILL)
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads)                     # no deadlock
    return results


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_a_worker_killed_holding_two_pipelined_requests_answers_both_503_and_leaks_nothing():
    fds = len(os.listdir("/proc/self/fd"))
    pool = DecodeWorkers(1)
    try:
        pool.wait_ready()
        (old,) = pool.pids
        bodies = [_awkward_request(), _awkward_request(odd_id=False)]
        results = _pipelined_then_killed(pool, bodies)
        assert [(type(r), getattr(r, "status", None), getattr(r, "code", None)) for r in results.values()] == \
            [(ApiError, 503, "decode_worker_lost")] * 2
        assert pool.replaced == 1 and pool.pids != [old] and not os.path.exists(f"/proc/{old}")    # reaped
        _assert_same_columns(pool.columns(bodies[0], PB, None, LIMIT), _in_thread(bodies[0]))
        (new,) = pool.pids
    finally:
        pool.close()
    assert not os.path.exists(f"/proc/{new}") and len(os.listdir("/proc/self/fd")) == fds


def test_a_dead_workers_socket_is_closed_only_after_the_request_being_written_to_it_is_done():
    """The second request is still in ``send_bytes`` (a big body, the worker stopped) when
    the first one's thread sees the worker gone: the socket must not be closed under it (it
    failed with TypeError, a 500, about one time in three; or could write into the file
    descriptor the replacement's socket pair reuses)."""
    import threading

    pool = DecodeWorkers(1)
    try:
        pool.wait_ready()
        (worker,) = pool._workers
        real, closed, closed_under_send = worker.conn, threading.Event(), []
        in_big_send = threading.Event()

        class Watched:                           # the worker's socket, telling when it is closed
            def __getattr__(self, name):
                return getattr(real, name)

            def send_bytes(self, data):
                if len(data) > LIMIT:            # the big body: give a close the time to come
                    in_big_send.set()
                    closed.wait(1.0)
                    closed_under_send.append(closed.is_set())
                real.send_bytes(data)

            def close(self):
                closed.set()
                real.close()

        worker.conn = Watched()
        results = _pipelined_then_killed(pool, [_awkward_request(), b"\x0a" + b"\x00" * (8 << 20)], in_big_send)
        assert closed_under_send == [False]
        assert [getattr(r, "status", None) for r in results.values()] == [503, 503]
    finally:
        pool.close()


def test_a_hung_worker_is_killed_after_the_reply_timeout_its_requests_503_and_it_is_replaced(monkeypatch):
    import swarmguard.apps.otlp.decode_workers as module

    monkeypatch.setattr(module, "_REPLY_TIMEOUT_S", 0.5, raising=False)
    pool = DecodeWorkers(1)
    try:
        pool.wait_ready()
        (old,) = pool.pids
        os.kill(old, signal.SIGSTOP)                 # alive, answering nothing
        body = _awkward_request()
        with pytest.raises(ApiError) as hung:
            pool.columns(body, PB, None, LIMIT)
        assert hung.value.status == 503 and hung.value.code == "decode_worker_lost"
        assert pool.replaced == 1 and pool.pids != [old] and not os.path.exists(f"/proc/{old}")
        _assert_same_columns(pool.columns(body, PB, None, LIMIT), _in_thread(body))
    finally:
        pool.close()


def test_a_worker_does_not_import_from_the_nodes_current_directory(tmp_path, monkeypatch):
    # a console script's node (swarmguard serve) has no current directory on its path: a
    # numpy.py or pickle.py where it was started from must not reach its workers either
    for name in ("numpy", "pickle", "gzip"):
        (tmp_path / f"{name}.py").write_text("raise ImportError('imported from the current directory')\n")
    monkeypatch.chdir(tmp_path)
    pool = DecodeWorkers(1)
    try:
        pool.wait_ready()
        body = gzip.compress(_awkward_request())
        _assert_same_columns(pool.columns(body, PB, "gzip", LIMIT), _in_thread(body, PB, "gzip"))
    finally:
        pool.close()


def _bounded(call, seconds: float = 20.0):
    """``call()``'s result or exception, from a thread given ``seconds``: a call that waits
    forever fails the test instead of hanging it."""
    import threading

    out: list = []

    def run() -> None:
        try:
            out.append(call())
        except Exception as exc:                 # noqa: BLE001  (the test looks at which)
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the call is still waiting"
    return out[0]


def test_no_worker_left_and_none_can_start_answers_503_at_once_and_a_later_request_starts_one(monkeypatch):
    import swarmguard.apps.otlp.decode_workers as module

    clock = [1000.0]
    monkeypatch.setattr(module, "_now", lambda: clock[0], raising=False)
    real, starts = module._Worker, []

    def no_file_handles():
        starts.append(1)
        raise OSError(24, "Too many open files")

    pool = DecodeWorkers(1)
    try:
        pool.wait_ready()
        monkeypatch.setattr(module, "_Worker", no_file_handles)
        os.kill(pool.pids[0], signal.SIGKILL)
        body = _awkward_request()
        lost = _bounded(lambda: pool.columns(body, PB, None, LIMIT))
        assert isinstance(lost, ApiError) and (lost.status, lost.code) == (503, "decode_worker_lost")
        assert "none could take its place" in lost.message and pool.pids == [] and len(starts) == 1
        for _ in range(3):                       # within the restart delay: no start tried
            refused = _bounded(lambda: pool.columns(body, PB, None, LIMIT))
            assert isinstance(refused, ApiError) and (refused.status, refused.code) == (503, "decode_worker_unavailable")
            assert refused.headers["Retry-After"] == "1" and "Too many open files" in refused.message
        assert len(starts) == 1
        clock[0] += module._RESTART_DELAY_S      # past the delay: one more try, failing again
        assert isinstance(_bounded(lambda: pool.columns(body, PB, None, LIMIT)), ApiError) and len(starts) == 2
        monkeypatch.setattr(module, "_Worker", real)     # the file handles are back
        clock[0] += module._RESTART_DELAY_S
        _assert_same_columns(_bounded(lambda: pool.columns(body, PB, None, LIMIT)), _in_thread(body))
        assert len(pool.pids) == 1
    finally:
        pool.close()


def _broken_install(tmp_path) -> str:
    """A folder whose ``swarmguard`` exits with code 3 when imported, after a line on stderr."""
    (tmp_path / "swarmguard").mkdir()
    (tmp_path / "swarmguard" / "__init__.py").write_text(
        "import sys\nsys.stderr.write('broken install\\n')\nraise SystemExit(3)\n")
    return str(tmp_path)


def test_a_worker_that_dies_importing_says_its_exit_code_and_where_its_error_went(tmp_path, monkeypatch):
    import swarmguard.apps.otlp.decode_workers as module

    monkeypatch.setattr(module, "_SOURCE", _broken_install(tmp_path))
    pool = DecodeWorkers(1)
    try:
        with pytest.raises(RuntimeError) as failed:
            pool.wait_ready()
    finally:
        pool.close()
    assert "did not start: it exited before saying ready (exit code 3;" in str(failed.value)
    assert "stderr" in str(failed.value) and "\n" not in str(failed.value)


def test_a_worker_that_dies_before_its_hello_is_not_replaced_in_a_loop(tmp_path, monkeypatch):
    import swarmguard.apps.otlp.decode_workers as module

    clock = [1000.0]
    monkeypatch.setattr(module, "_now", lambda: clock[0], raising=False)
    monkeypatch.setattr(module, "_SOURCE", _broken_install(tmp_path))
    pool = DecodeWorkers(1)                      # not waited for: its first request finds it dead
    try:
        body = _awkward_request()
        lost = _bounded(lambda: pool.columns(body, PB, None, LIMIT))
        assert isinstance(lost, ApiError) and (lost.status, lost.code) == (503, "decode_worker_lost")
        again = _bounded(lambda: pool.columns(body, PB, None, LIMIT))
        assert isinstance(again, ApiError) and again.code == "decode_worker_unavailable"
        assert "exit code 3" in again.message and pool.pids == [] and pool.replaced == 0
    finally:
        pool.close()


def test_an_unexpected_error_writing_a_request_is_a_503_and_the_next_request_is_answered():
    pool = DecodeWorkers(1)
    try:
        pool.wait_ready()
        (worker,) = pool._workers
        real = worker.conn

        class Faulty:                            # the socket, failing once with no OSError
            def __getattr__(self, name):
                return getattr(real, name)

            def send_bytes(self, data):
                raise TypeError("an unexpected failure in send_bytes")

        worker.conn = Faulty()
        body = _awkward_request()
        failed = _bounded(lambda: pool.columns(body, PB, None, LIMIT))
        assert isinstance(failed, ApiError) and (failed.status, failed.code) == (503, "decode_worker_lost")
        assert pool.replaced == 1 and worker.process.returncode is not None     # reaped
        _assert_same_columns(_bounded(lambda: pool.columns(body, PB, None, LIMIT)), _in_thread(body))
    finally:
        pool.close()


def test_workers_started_before_one_fails_to_start_are_stopped(monkeypatch):
    import swarmguard.apps.otlp.decode_workers as module

    real, made = module._Worker, []

    def second_fails():
        if made:
            raise OSError(24, "Too many open files")
        made.append(real())
        return made[-1]

    monkeypatch.setattr(module, "_Worker", second_fails)
    try:
        with pytest.raises(OSError, match="Too many open files"):
            DecodeWorkers(2)
        assert len(made) == 1 and made[0].process.returncode is not None
    finally:
        for worker in made:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait(10)


def test_a_pool_left_short_by_a_failed_start_is_made_whole_by_a_request_after_the_delay(monkeypatch):
    import swarmguard.apps.otlp.decode_workers as module

    clock = [1000.0]
    monkeypatch.setattr(module, "_now", lambda: clock[0])
    real = module._Worker

    def no_file_handles():
        raise OSError(24, "Too many open files")

    pool = DecodeWorkers(2)
    try:
        pool.wait_ready()
        monkeypatch.setattr(module, "_Worker", no_file_handles)
        killed = pool.pids[0]
        os.kill(killed, signal.SIGKILL)
        body = _awkward_request()
        codes = set()
        for _ in range(4):          # one of them on the dead worker: its replacement cannot start
            answer = _bounded(lambda: pool.columns(body, PB, None, LIMIT))
            codes.add(answer.code if isinstance(answer, ApiError) else "ok")
        assert codes == {"decode_worker_lost", "ok"} and len(pool.pids) == 1    # the other one answers
        monkeypatch.setattr(module, "_Worker", real)     # the file handles are back
        _assert_same_columns(_bounded(lambda: pool.columns(body, PB, None, LIMIT)), _in_thread(body))
        assert len(pool.pids) == 1                       # within the delay: no start
        clock[0] += module._RESTART_DELAY_S
        for _ in range(3):
            _assert_same_columns(_bounded(lambda: pool.columns(body, PB, None, LIMIT)), _in_thread(body))
        assert len(pool.pids) == 2 and killed not in pool.pids
    finally:
        pool.close()


def test_a_request_while_the_only_worker_is_broken_but_listed_waits_for_its_replacement():
    import threading

    pool = DecodeWorkers(1)
    try:
        pool.wait_ready()
        (worker,) = pool._workers
        os.kill(worker.pid, signal.SIGKILL)
        worker.process.wait(10)
        worker.broken = True     # as _exchange leaves it, before its request calls _lost
        waiting = threading.Event()
        real_wait = pool._freed.wait

        def wait(timeout=None):
            waiting.set()
            return real_wait(timeout)

        pool._freed.wait = wait
        taken: list = []
        thread = threading.Thread(target=lambda: taken.append(pool._take()), daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not waiting.is_set() and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert waiting.is_set() and pool.pids == [worker.pid]     # no start of its own: it waits
        assert pool._lost(worker)                                # the broken one's request replaces it
        thread.join(20)
        assert not thread.is_alive() and taken[0] is not worker
        pool._give_back(taken[0])
        assert pool.pids == [taken[0].pid] and pool.replaced == 1        # one worker, as asked
    finally:
        pool.close()


def test_an_interrupt_while_a_request_is_written_releases_the_worker_for_the_next_request():
    class Interrupted(BaseException):
        pass

    pool = DecodeWorkers(1)
    try:
        pool.wait_ready()
        (worker,) = pool._workers
        real = worker.conn

        class Interrupting:                      # the socket's write interrupted (no Exception)
            def __getattr__(self, name):
                return getattr(real, name)

            def send_bytes(self, data):
                raise Interrupted

        worker.conn = Interrupting()
        body = _awkward_request()
        with pytest.raises(Interrupted):
            pool.columns(body, PB, None, LIMIT)
        assert worker not in pool._workers and worker.process.returncode is not None    # reaped
        _assert_same_columns(_bounded(lambda: pool.columns(body, PB, None, LIMIT)), _in_thread(body))
        assert pool.replaced == 1
    finally:
        pool.close()


def test_a_worker_silent_past_the_start_timeout_is_said_to_be_silent_not_to_have_exited(monkeypatch):
    import swarmguard.apps.otlp.decode_workers as module

    monkeypatch.setattr(module, "_START_TIMEOUT_S", 0.3)
    real_popen = subprocess.Popen

    def silent_worker(args, **kwargs):               # runs, holds its socket, never says ready
        return real_popen([sys.executable, "-c", "import time; time.sleep(60)"], **kwargs)

    monkeypatch.setattr(module.subprocess, "Popen", silent_worker)
    pool = DecodeWorkers(1)
    monkeypatch.setattr(module.subprocess, "Popen", real_popen)
    try:
        with pytest.raises(RuntimeError, match=r"did not start: no hello within 0\.3 s \(the worker still ran\)"):
            pool.wait_ready()
    finally:
        pool.close(timeout=0.5)                      # it reads nothing: killed past the timeout
