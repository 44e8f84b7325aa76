"""benchmarks/gpu.sh, the prepared GPU run: its --tiny mode runs every step end to end on CPU at --quick
sizes, and without a GPU the real run stops at once with one error line and exit 2."""

import json
import os
import subprocess
import sys

from conftest import REPO
from jaxconv.bench import results

SCRIPT = REPO / "benchmarks" / "gpu.sh"


def run_script(*args, **env):
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable, **env})


def test_tiny_run_writes_every_result(tmp_path):
    out = tmp_path / "results"
    done = run_script("--tiny", "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]

    summary = json.loads((out / "gpu_run.json").read_text())
    assert summary["tiny"] and summary["ok"] and summary["backend"] == "cpu"
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == ["tests_gpu", "tests_cpu_parallel", "conv", "sample", "train_imagenet32", "train_alexnet32"]
    for s in steps.values():
        assert s["status"] == "ok" and s["exit_code"] == 0 and s["wall_s"] > 0, s
        assert f"step {s['name']} (limit" in done.stdout  # each step logs what it runs ...
        assert f"step {s['name']}: ok (exit 0) in" in done.stdout  # ... and its wall time
    assert "--quick" in steps["conv"]["command"] and "--quick" in steps["train_imagenet32"]["command"]

    tests = json.loads((out / "tests.json").read_text())
    assert {g["group"] for g in tests["groups"]} == {"gpu", "cpu_parallel"}
    for g in tests["groups"]:
        assert " passed in " in g["summary"] and "failed" not in g["summary"], g
    assert (out / "tests.txt").read_text().count(" passed in ") == 2

    for name in ("conv.json", "sample.json", "train_imagenet32/train.json", "train_alexnet32/train.json"):
        doc = results.load(out / name)  # parses and validates against the bench schema
        assert doc["quick"] and doc["rows"], name
    sample = results.load(out / "sample.json")
    assert {r["preset"].split()[0] for r in sample["rows"]} == {"gated_pixelcnn_imagenet32"}
    assert all(r["agree"] for r in sample["rows"])
    big = results.load(out / "train_imagenet32/train.json")
    assert {(r["preset"].split()[0], r["dtype"], r["framework"]) for r in big["rows"]} == {
        ("gated_pixelcnn_imagenet32", "bfloat16", "jax")}
    alex = results.load(out / "train_alexnet32/train.json")
    assert {r["framework"] for r in alex["rows"]} == {"jax", "torch"}

    headline = summary["headline"]
    assert set(headline) == {"conv_default_vs_torch", "sample", "train_imagenet32_bfloat16", "train_alexnet32_vs_torch"}
    assert headline["sample"]["cached_seconds"] > 0 and headline["train_imagenet32_bfloat16"]["mfu"] > 0
    assert headline["train_alexnet32_vs_torch"]["vs_torch"] > 0
    assert "all steps passed" in (out / "gpu_run.log").read_text()


def test_without_a_gpu_the_real_run_is_one_error_line_and_exit_2(tmp_path):
    done = run_script("--out", str(tmp_path / "results"), JAX_PLATFORMS="cpu")
    assert done.returncode == 2
    assert done.stderr.startswith("gpu.sh: error: no GPU: JAX's default backend is 'cpu'")
    assert done.stderr.count("\n") == 1 and not (tmp_path / "results").exists()
    done = run_script("--bogus")
    assert done.returncode == 2 and done.stderr.startswith("gpu.sh: error: unknown argument '--bogus'")
