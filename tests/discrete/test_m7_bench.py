"""`reverie bench discrete-processes` runs and writes its tables."""

import json

from reverie import cli


def test_bench_discrete_processes_runs(tmp_path, capsys):
    out = tmp_path / "dp.json"
    rc = cli.main(["bench", "discrete-processes", "--n", "200", "--parts", "blackout",
                   "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert {r["method"] for r in res["blackout"]["rows"]} == {"bridge", "tau_leaping"}
    assert all(0 <= r["tv"] <= 1 for r in res["blackout"]["rows"])
    assert "TV / floor" in capsys.readouterr().out
    assert cli.main(["bench", "discrete-processes", "--parts", "nope", "--out",
                     str(out)]) != 0
