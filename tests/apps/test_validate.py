import json

from typer.testing import CliRunner

from swarmguard.apps.validate import run_validation
from swarmguard.cli import app


def test_rows_follow_the_guides_table_and_measure_what_they_say():
    rows = run_validation(agents=20_000, evidence=200_000, updates=500, seed=1)
    assert [r.metric for r in rows] == ["Agent scale", "Complexity", "Latency", "Evidence points",
                                        "Availability", "Consistency"]
    by = {r.metric: r for r in rows}
    # below a million agents the scale row cannot pass, and says why
    assert not by["Agent scale"].meets_requirement and "--quick" in by["Agent scale"].note
    # 2·10^5 evidence points are below the guide's 10^6 requirement
    assert not by["Evidence points"].meets_requirement
    assert "300/300 sampled agents bit-identical" in by["Evidence points"].measured
    assert by["Availability"].meets_requirement and by["Availability"].meets_claim
    assert by["Consistency"].meets_requirement and "replicas identical: True" in by["Consistency"].measured
    assert by["Latency"].meets_requirement          # < 1 ms per update here, by a wide margin


def test_cli_exits_zero_unless_strict_and_writes_json(tmp_path):
    runner = CliRunner()
    out = tmp_path / "v.json"
    result = runner.invoke(app, ["validate", "--agents", "20000", "--evidence", "200000", "--updates", "300",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert len(rows) == 6 and all(isinstance(r["meets_claim"], bool) for r in rows)
    assert "rows meet both the requirement and the claim" in result.output
    strict = runner.invoke(app, ["validate", "--agents", "20000", "--evidence", "200000", "--updates", "300",
                                 "--strict"])
    assert strict.exit_code == 1          # the scale row fails below 10^6 agents
    assert runner.invoke(app, ["validate", "--agents", "10"]).exit_code == 2
