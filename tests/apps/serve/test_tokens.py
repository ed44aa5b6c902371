"""Tokens: the TOML file, roles, 401 / 403, and loopback-only without tokens."""

from __future__ import annotations

import pytest

from swarmguard.apps.serve.settings import ServeSettings, is_loopback
from swarmguard.apps.serve.tokens import load_tokens
from swarmguard.errors import InvalidInputError

from .conftest import ADMIN_SECRET, auth, metric, post_behaviors, post_evidence


def test_secrets_and_sha256_entries_authenticate_with_their_roles(tokens_file):
    store = load_tokens(tokens_file)
    assert store.authenticate("Bearer t-ingest").role == "ingest"
    assert store.authenticate("Bearer t-obs7").source == "observer-7"
    assert store.authenticate(f"Bearer {ADMIN_SECRET}").role == "admin"       # stored as its sha256
    assert store.authenticate("Bearer nope") is None
    assert store.authenticate("Basic t-ingest") is None
    assert store.authenticate(None) is None


@pytest.mark.parametrize("text, fragment", [
    ("", "no [[token]]"),
    ('[[token]]\nsecret = "x"\nrole = "king"\n', "role must be one of"),
    ('[[token]]\nrole = "read"\n', "exactly one of secret or sha256"),
    ('[[token]]\nsecret = "x"\nrole = "observer"\n', "needs its source"),
    ('[[token]]\nsha256 = "abc"\nrole = "read"\n', "64 hex digits"),
    ('[[token]\n', "not valid TOML"),
    ('[[token]]\nsecret = "p\u00e4ss"\nrole = "read"\n', "printable ASCII"),
    ('[[token]]\nsecret = "x"\nrole = "read"\n[[token]]\nsecret = "x "\nrole = "admin"\n', "same secret as token 1"),
    ('[[token]]\nsecret = "x"\nrole = "read"\n[[token]]\nsha256 = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"\n'
     'role = "admin"\n', "same secret as token 1"),
])
def test_a_malformed_tokens_file_is_refused_naming_the_fault(tmp_path, text, fragment):
    path = tmp_path / "t.toml"
    path.write_text(text)
    with pytest.raises(InvalidInputError, match=fragment.replace("[", r"\[")):
        load_tokens(path)


@pytest.mark.parametrize("role", ["observer", "admin"])
def test_a_source_posing_as_a_nodes_detector_is_refused_at_load(tmp_path, role):
    # serve:<region>:<population> is the source of a node's detectors' own evidence, which every
    # node routes to that population alone: an observer signing so would be counted as a detector
    ok = tmp_path / "ok.toml"
    ok.write_text(f'[[token]]\nsecret = "x"\nrole = "{role}"\nsource = "observer-serve:eu"\n')
    assert load_tokens(ok).authenticate("Bearer x").source == "observer-serve:eu"
    path = tmp_path / "t.toml"
    path.write_text(f'[[token]]\nsecret = "x"\nrole = "read"\n[[token]]\nsecret = "y"\nrole = "{role}"\n'
                    'source = "serve:eu:behaviors"\n')
    with pytest.raises(InvalidInputError, match=r"token 2: source 'serve:eu:behaviors' starts with 'serve:'.*reserved"):
        load_tokens(path)


def test_missing_or_unknown_token_is_401_and_wrong_role_403(served):
    _, _, client = served
    rows = [{"agent_id": "a", "features": [1.0, 2.0]}]
    r = post_behaviors(client, rows, token="")
    assert r.status_code == 401 and r.json() == {"error": "missing bearer token"}
    assert r.headers["www-authenticate"] == "Bearer"
    assert post_behaviors(client, rows, token="wrong").status_code == 401
    r = post_behaviors(client, rows, token="t-read")
    assert r.status_code == 403 and "may not ingest" in r.json()["error"]
    r = post_evidence(client, [{"evidence_id": "e", "agent_id": "a", "evidence_type": "peer_report",
                                "log_odds": 1.0, "confidence": 1.0, "timestamp": 0.0}], token="t-ingest")
    assert r.status_code == 403
    assert client.get("/v1/agents", headers=auth("t-obs7")).status_code == 403
    assert client.get("/v1/agents").status_code == 401
    assert metric(client, "swarmguard_errors_total", code="unauthenticated", status="401") == 3
    assert metric(client, "swarmguard_errors_total", code="forbidden", status="403") == 3


def test_health_is_public_and_metrics_needs_read_unless_public(served, make_node, tmp_path):
    _, _, client = served
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json() == {"status": "ready"}
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=auth("t-ingest")).status_code == 403
    assert client.get("/metrics", headers=auth("t-read")).status_code == 200
    _, _, public = make_node(data_dir=tmp_path / "other", metrics_public=True)
    assert public.get("/metrics").status_code == 200


def test_non_loopback_without_tokens_is_refused():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    ServeSettings(host="127.0.0.1").check_exposure()
    with pytest.raises(InvalidInputError, match="refusing to listen on 0.0.0.0 without --tokens"):
        ServeSettings(host="0.0.0.0").check_exposure()
    ServeSettings(host="0.0.0.0", tokens_file="t.toml").check_exposure()
