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


def test_debug_keeps_the_exit_code_and_works_after_the_subcommand(capfd):
    """``--debug`` adds the traceback, keeps the documented exit code, and goes before or after the subcommand."""
    from jaxconv.errors import ConfigError

    for argv in (["--debug", "train", "no_such_experiment"], ["train", "no_such_experiment", "--debug"],
                 ["config", "no_such_experiment", "--debug"]):
        assert cli.main(argv) == ConfigError.exit_code == 2, argv
        err = capfd.readouterr().err
        assert "Traceback (most recent call last)" in err and "jaxconv: error: unknown experiment" in err, argv
    assert cli.main(["train", "no_such_experiment"]) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    for argv in (["viz", "filters", "runs/x", "--debug"], ["--debug", "viz", "filters", "runs/x"]):
        assert cli._parser().parse_args(argv).debug is True, argv
    assert cli._parser().parse_args(["viz", "filters", "runs/x"]).debug is False


def test_synthetic_only_data_keys_must_agree_with_another_source(tmp_path, capfd):
    """data.image_shape / num_classes describe synthetic data; with mnist they were silently ignored
    (training on 28x28) while config.json recorded them. Now a value that disagrees with the data is one
    line, exit 2, nothing written; one that agrees (a smoke config pointed at real data) is fine."""
    for setting, shown, found in (("data.image_shape=32,32,3", "data.image_shape=32,32,3", "28,28,1"),
                                  ("data.num_classes=5", "data.num_classes=5", "10")):
        assert cli.main(["train", "lenet_mnist", "--smoke", "--set", setting, "--workdir", str(tmp_path / "w")]) == 2
        err = capfd.readouterr().err
        assert err == f"jaxconv: error: {shown} applies to data.source=synthetic only; the mnist data has " \
                      f"{found} (remove the setting)\n", err
        assert not (tmp_path / "w").exists()
    assert cli.main(["train", "lenet_mnist", "--smoke", "--dry-run", "--set", "data.image_shape=28,28,1",
                     "--set", "data.num_classes=10", "--workdir", str(tmp_path / "w")]) == 0  # agrees with mnist


def _help(*argv: str) -> str:
    parser = cli._parser()
    for name in argv:
        parser = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices[name]
    return " ".join(parser.format_help().split())


def test_bench_modes_help_and_report_title_the_stored_device(tmp_path, capfd):
    """``--modes`` help lists all four modes; ``bench report DIR`` names the device stored in the JSON, not DIR."""
    import shutil

    from conftest import REPO

    text = _help("bench")
    assert all(mode in text for mode in ("forward_backward", "input_grad", "kernel_grad")), text
    results = tmp_path / "copied_here"
    shutil.copytree(REPO / "benchmarks" / "results" / "cpu-amd-epyc-avx2-2c", results)
    device = json.loads((results / "conv.json").read_text())["device"]
    assert cli.main(["bench", "report", str(results), "--no-plots"]) == 0
    out, _ = capfd.readouterr()
    assert f"Results for `{device}`" in out and "copied_here`" not in out


def test_experiment_module_help_shows_train_options_without_a_name(monkeypatch, capfd):
    """``python -m jaxconv.experiments.X --help``: train's options, no required NAME; --debug passes through."""
    import subprocess
    import sys

    import pytest

    from conftest import REPO

    monkeypatch.setattr(sys, "argv", ["lenet_mnist.py", "--help"])
    with pytest.raises(SystemExit) as stopped:
        cli.run_experiment_module("lenet_mnist")
    assert stopped.value.code == 0
    out = capfd.readouterr().out
    usage = out.split("\n\n")[0]
    assert usage.startswith("usage: python -m jaxconv.experiments.lenet_mnist") and "name" not in usage.lower()
    assert "--workdir" in out and "--set" in out and "--smoke" in out and "--dry-run" in out
    done = subprocess.run([sys.executable, "-m", "jaxconv.experiments.lenet_mnist", "--set", "optim.bogus=1",
                           "--debug"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" in done.stderr and "jaxconv: error:" in done.stderr, done.stderr


def test_viz_filters_and_features_say_where_they_write_and_what_is_cut(trained_smoke, tmp_path, monkeypatch, capfd):
    """--help says the default picture goes inside the run directory, the command prints the path, and the
    features picture says when it shows only the first maps of a layer."""
    import shutil

    from jaxconv import viz

    for picture in ("filters", "features"):
        assert f"default: {picture}.png inside the run directory" in _help("viz", picture)
    workdir = tmp_path / "run"
    shutil.copytree(trained_smoke, workdir)
    assert cli.main(["viz", "filters", str(workdir)]) == 0
    assert capfd.readouterr().out == f"wrote {workdir / 'filters.png'}\n"
    labels = []
    grid = viz._grid_figure
    monkeypatch.setattr(viz, "_grid_figure", lambda rows, out, title="": (labels.extend(r[0] for r in rows),
                                                                          grid(rows, out, title))[1])
    assert cli.main(["viz", "features", str(workdir)]) == 0
    assert capfd.readouterr().out == f"wrote {workdir / 'features.png'}\n" and (workdir / "features.png").exists()
    assert labels == ["input", "C1 (28, 28, 6)", "C3 (10, 10, 16)\n(first 8 of 16 maps)"], labels
