"""``swarmguard serve``'s refusals before it listens, and what it says on start."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from swarmguard.cli import app


def _run(*args: str):
    return CliRunner().invoke(app, ["serve", *args], terminal_width=200)


def test_non_loopback_without_tokens_exits_2_with_a_clear_message():
    out = _run("--host", "0.0.0.0")
    assert out.exit_code == 2
    assert re.search(r"refusing to listen on 0\.0\.0\.0 without --tokens", out.output)


def test_a_bad_tokens_file_and_bad_options_exit_2(tmp_path):
    bad = tmp_path / "t.toml"
    bad.write_text('[[token]]\nsecret = "x"\nrole = "wizard"\n')
    out = _run("--tokens", str(bad))
    assert out.exit_code == 2 and "role must be one of" in out.output
    assert _run("--window", "0").exit_code == 2
    out = _run("--certfile", "c.pem")
    assert out.exit_code == 2 and "--certfile and --keyfile go together" in out.output
    out = _run("--address", "10.0.0.1:6379")
    assert out.exit_code == 2 and "--backend ray" in out.output


def test_without_data_dir_it_says_it_uses_a_temporary_folder(monkeypatch):
    import uvicorn

    from swarmguard.apps.serve.run import run_server
    from swarmguard.apps.serve.settings import ServeSettings

    seen = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: seen.setdefault("config", self.config))
    said: list[str] = []
    run_server(ServeSettings(port=18999), say=said.append)
    assert seen["config"].port == 18999 and seen["config"].host == "127.0.0.1"
    temporary = [line for line in said if "temporary folder" in line]
    assert temporary and "no --data-dir" in temporary[0]
    folder = temporary[0].split("temporary folder ", 1)[1].split(" ", 1)[0]
    import shutil
    from pathlib import Path

    assert Path(folder).is_dir()
    shutil.rmtree(folder)
    with pytest.raises(Exception, match="refusing"):
        run_server(ServeSettings(host="10.0.0.1"), say=said.append)


def test_the_command_line_leaves_the_web_stack_unimported():
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[3] / "src"
    probe = ("import sys, json; from swarmguard.cli import app; import swarmguard.client; "
             "print(json.dumps([m for m in ('fastapi', 'uvicorn', 'starlette', 'prometheus_client', 'httpx') "
             "if m in sys.modules]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_run_server_freezes_the_collector_while_it_serves_and_thaws_it_after(monkeypatch, tmp_path):
    """gc.freeze() is for the listener's lifetime: a caller that runs the server in its own
    process (a test, an embedding program) gets its collector back as it was once it returns."""
    import gc

    import uvicorn

    from swarmguard.apps.serve.run import run_server
    from swarmguard.apps.serve.settings import ServeSettings

    gc.unfreeze()
    during = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: during.append(gc.get_freeze_count()))
    run_server(ServeSettings(port=18999, data_dir=tmp_path / "data"), say=lambda line: None)
    assert during and during[0] > 0                 # frozen while the listener runs
    assert gc.get_freeze_count() == 0               # and thawed once it returns

    def fails(self):
        raise OSError("address in use")

    monkeypatch.setattr(uvicorn.Server, "run", fails)
    with pytest.raises(OSError, match="address in use"):
        run_server(ServeSettings(port=18999, data_dir=tmp_path / "data"), say=lambda line: None)
    assert gc.get_freeze_count() == 0


def test_body_timeout_reaches_the_node_and_a_bad_one_exits_2(monkeypatch):
    import swarmguard.apps.serve.run as run

    seen = {}
    monkeypatch.setattr(run, "run_server", lambda settings, **kw: seen.setdefault("settings", settings))
    out = _run("--body-timeout", "300")
    assert out.exit_code == 0, out.output
    assert seen["settings"].body_timeout_seconds == 300.0
    for bad in ("0", "-1", "nan"):
        out = _run("--body-timeout", bad)
        assert out.exit_code == 2 and "--body-timeout (body_timeout_seconds) must be > 0" in out.output


def test_header_timeout_reaches_the_node_is_in_the_help_and_a_bad_one_exits_2(monkeypatch):
    import swarmguard.apps.serve.run as run
    from swarmguard.apps.serve.settings import ServeSettings

    seen = {}
    monkeypatch.setattr(run, "run_server", lambda settings, **kw: seen.setdefault("settings", settings))
    out = _run("--header-timeout", "2.5")
    assert out.exit_code == 0, out.output
    assert seen["settings"].header_timeout_seconds == 2.5
    assert ServeSettings().header_timeout_seconds == 10.0          # the default the help and README give
    # the help's table, its box and line breaks taken out (rich wraps it at its own width)
    help_text = "".join(c for c in _run("--help").output if not c.isspace() and c != "│")
    assert "--header-timeout" in help_text and "gets408" in help_text and "[default:10.0]" in help_text
    for bad in ("0", "-1", "nan"):
        out = _run("--header-timeout", bad)
        assert out.exit_code == 2 and "--header-timeout (header_timeout_seconds) must be > 0" in out.output


def test_decode_workers_reaches_the_node_defaults_to_0_and_a_bad_one_exits_2(monkeypatch):
    import swarmguard.apps.serve.run as run

    seen = []
    monkeypatch.setattr(run, "run_server", lambda settings, **kw: seen.append(settings))
    assert _run().exit_code == 0 and _run("--decode-workers", "2").exit_code == 0
    assert [s.decode_workers for s in seen] == [0, 2]
    for bad in ("-1", "65", "x"):
        out = _run("--decode-workers", bad)
        assert out.exit_code == 2 and "--decode-workers" in out.output


@pytest.mark.parametrize(("missing", "said", "options"), [
    ("fastapi", "needs the serve extra (pip install 'swarmguard[serve]')", ()),
    ("uvicorn", "needs the serve extra (pip install 'swarmguard[serve]')", ()),
    ("scipy.linalg.lapack", "cannot import scipy.linalg.lapack", ()),
    # imported by uvicorn only once it listens (its parser), by the app when it is made (its
    # metrics), by the node as it builds (Ray), by the peer sync at its first round (httpx):
    # a traceback after the start-up lines, or a node listening that never starts
    ("h11", "needs the serve extra (pip install 'swarmguard[serve]')", ()),
    ("prometheus_client", "needs the serve extra (pip install 'swarmguard[serve]')", ()),
    ("ray", "needs the ray extra (pip install 'swarmguard[ray]')", ("--backend", "ray")),
    ("httpx", "needs the serve extra (pip install 'swarmguard[serve]')", ("--peers", "http://127.0.0.1:9")),
])
def test_a_module_serve_cannot_import_is_one_line_and_a_non_zero_exit_before_anything_is_made(missing, said, options,
                                                                                              tmp_path):
    # in a fresh interpreter whose import of `missing` fails (None in sys.modules makes `import`
    # raise ModuleNotFoundError, as an absent package does), so that nothing of this process's
    # imports helps; the command must stop before it makes its data folder or listens
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[3] / "src"
    data = tmp_path / "data"
    script = (f"import sys; sys.modules[{missing!r}] = None\n"
              "from swarmguard.cli import app\n"
              f"app(['serve', '--port', '0', '--data-dir', {str(data)!r}, *{list(options)!r}], "
              "prog_name='swarmguard')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2, out.stderr              # non-zero: 2, as every refusal of serve before it listens
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: swarmguard serve ") and said in lines[0], out.stderr
    assert missing in lines[0] and "Traceback" not in out.stderr and out.stdout == ""
    assert not data.exists()


def test_an_import_error_of_paragraphs_or_without_a_module_name_is_still_one_line():
    from swarmguard.cli import _cannot_import

    numpy_like = ImportError("\n\nIMPORTANT: PLEASE READ THIS FOR ADVICE ON HOW TO SOLVE THIS ISSUE!\n\n"
                             "Importing the numpy C-extensions failed.\n", name="numpy.core._multiarray_umath")
    said = _cannot_import("serve", numpy_like)
    assert "\n" not in said and said.startswith("swarmguard serve cannot import numpy.core._multiarray_umath: "
                                                "IMPORTANT: PLEASE READ")
    assert "pip install --force-reinstall numpy" in said
    said = _cannot_import("serve", ImportError("libopenblas.so.0: cannot open shared object file"))
    assert said == ("swarmguard serve cannot import a module it needs: "
                    "libopenblas.so.0: cannot open shared object file")
    said = _cannot_import("serve", ModuleNotFoundError("No module named 'h11'", name="h11"))
    assert said == "swarmguard serve needs the serve extra (pip install 'swarmguard[serve]'): No module named 'h11'"


@pytest.mark.parametrize("missing", ["opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http", "httpx"])
def test_fleet_without_the_fleet_extra_says_so_in_one_line_and_exits_2_before_it_starts(missing):
    # the SDK, its exporter and httpx are imported on first use: without them imported first the
    # command said it started, then exited 1 with a bare ModuleNotFoundError, never naming the extra
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[3] / "src"
    script = (f"import sys; sys.modules[{missing!r}] = None\n"
              "from swarmguard.cli import app\n"
              "app(['fleet', '--endpoint', 'http://127.0.0.1:9', '--agents', '5', '--misbehaving', '1', "
              "'--windows', '1', '--window', '0.5'], prog_name='swarmguard')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: swarmguard fleet needs the fleet extra "
                                                   "(pip install 'swarmguard[fleet]'): "), out.stderr
    assert missing.split(".")[0] in lines[0] and "Traceback" not in out.stderr and out.stdout == ""
