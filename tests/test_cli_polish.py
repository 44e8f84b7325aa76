"""Small CLI defects a newcomer met walking through the README (issue 14, item 8)."""

import json

from jaxconv import cli


def test_bench_conv_shape_runs_only_that_shape_into_bench_results(tmp_path, monkeypatch, capfd):
    """``bench conv --shape S`` without --sets measures S alone (not the sweep plus S), and without --out
    writes into ./bench-results/<device>/, never into the committed benchmarks/results/."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "conv", "--quick", "--shape", "2,8,8,3,4,3,1,1", "--dtypes", "float32",
                     "--modes", "forward", "--impls", "xla", "--layouts", "NHWC", "--no-torch", "--no-plots"]) == 0
    out, _ = capfd.readouterr()
    assert "[1/1] user:2,8,8,3,4,3,1,1" in out
    (path,) = tmp_path.glob("bench-results/*/conv.json")
    assert [r["shape"] for r in json.loads(path.read_text())["rows"]] == ["user:2,8,8,3,4,3,1,1"]
    assert not (tmp_path / "benchmarks").exists()
    assert "bench-results/<device>" in cli._parser()._subparsers._group_actions[0].choices["bench"].format_help()
