"""``jaxconv bench conv --impl MODULE:FUNCTION``: a user's own conv kernel in the sweep, run the way a user
runs it: the ``jaxconv`` command in a fresh process, the kernel file in its working directory. A correct
kernel is checked, then timed; a wrong one is a mismatch and never timed; a ``custom_vjp``'s own gradient
is the one checked; a kernel raising on one shape is that row's error; the example of docs/benchmarks.md
is examples/my_kernels.py and runs; a bad ``--impl`` is one line and exit 2, nothing written."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO
from jaxconv import cli
from jaxconv.bench import conv_runners, results
from jaxconv.errors import ConfigError

KERNELS = textwrap.dedent('''
    import functools

    import jax
    from jax import lax


    def good(x, kernel, strides, padding, dilation, groups):
        return lax.conv_general_dilated(x, kernel, strides, padding, rhs_dilation=dilation,
                                        feature_group_count=groups, dimension_numbers=("NHWC", "HWIO", "NHWC"))


    def wrong(x, kernel, strides, padding, dilation, groups):  # the output flipped left-right
        return good(x, kernel, strides, padding, dilation, groups)[:, :, ::-1]


    def cropped(x, kernel, strides, padding, dilation, groups):  # one output row short
        return good(x, kernel, strides, padding, dilation, groups)[:, 1:]


    def ungrouped(x, kernel, strides, padding, dilation, groups):
        if groups != 1:
            raise NotImplementedError(f"groups={groups}")
        return good(x, kernel, strides, padding, dilation, groups)


    @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
    def custom(x, kernel, strides, padding, dilation, groups):  # the right output; its rule's gradients doubled
        return good(x, kernel, strides, padding, dilation, groups)


    def _custom_forward(x, kernel, strides, padding, dilation, groups):
        return good(x, kernel, strides, padding, dilation, groups), (x, kernel)


    def _custom_backward(strides, padding, dilation, groups, saved, dy):
        dx, dk = jax.vjp(lambda x, k: good(x, k, strides, padding, dilation, groups), *saved)[1](dy)
        return 2 * dx, 2 * dk


    custom.defvjp(_custom_forward, _custom_backward)


    @jax.custom_vjp
    def two_args(x, kernel):
        return x


    not_a_function = 3
''')
SHAPES = ["2,8,8,4,4,3,1,1", "2,9,9,4,6,3,2,1,2"]  # plain; strided and grouped
EXAMPLE = REPO / "examples" / "my_kernels.py"


def jaxconv_command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed ``jaxconv`` script (``python -m jaxconv`` without one), in ``cwd``."""
    script = Path(sys.executable).with_name("jaxconv")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "jaxconv"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def doc_example() -> str:
    text = (REPO / "docs" / "benchmarks.md").read_text()
    match = re.search(r"<!-- example: examples/my_kernels.py -->\n```python\n(.*?)```", text, re.S)
    assert match, "docs/benchmarks.md lost its example kernel file"
    return match.group(1)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One quick sweep with every kind of user kernel; returns (process, conv.json, results directory)."""
    work = tmp_path_factory.mktemp("user-kernels")
    (work / "kernels.py").write_text(KERNELS)
    (work / "my_kernels.py").write_text(doc_example())  # what docs/benchmarks.md shows, as a user saves it
    impls = [f"kernels.py:{f}" for f in ("good", "wrong", "cropped", "custom", "ungrouped")]
    impls += ["my_kernels.py:conv", f"{work / 'my_kernels.py'}:conv_xla_grads"]
    shapes = [a for s in SHAPES for a in ("--shape", s)]
    done = jaxconv_command("bench", "conv", "--quick", *shapes, *[a for i in impls for a in ("--impl", i)],
                           "--impls", "xla", "--layouts", "NHWC", "--no-torch", "--dtypes", "float32,bfloat16",
                           "--modes", "forward,forward_backward", "--no-plots", "--out", "res", cwd=work)
    if done.returncode != 0:
        pytest.fail(f"jaxconv bench conv --impl ... exited {done.returncode}: {done.stderr[-2000:]}")
    return done, results.load(work / "res" / "conv.json"), work / "res"


def results_of(doc: dict, impl: str) -> list[tuple[dict, dict]]:
    pairs = [(row, r) for row in doc["rows"] for r in row["results"] if r["impl"] == impl]
    assert len(pairs) == len(doc["rows"]), f"{impl} missing from some rows"
    return pairs


def test_a_correct_kernel_is_timed_and_a_wrong_one_is_not(sweep):
    done, doc, out = sweep
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert len(doc["rows"]) == len(SHAPES) * 2 * 2  # shapes x dtypes x modes
    assert doc["settings"]["user_kernels"]["kernels:good"] == "kernels.py:good"
    for row, r in results_of(doc, "kernels:good"):
        assert (r["framework"], r["layout"], r["status"]) == ("jax", "NHWC", "ok")
        assert r["error"] <= conv_runners.TOLERANCE[row["dtype"]]
        assert r["time_s"] > 0 and r["runs_s"] and r["flops_per_s"] > 0 and r["compile_s"] > 0
    for row, r in results_of(doc, "kernels:wrong"):
        assert r["status"] == "mismatch" and r["error"] > conv_runners.TOLERANCE[row["dtype"]]
        assert "tolerance" in r["message"]
        assert r["time_s"] is None and r["runs_s"] == [] and r["flops_per_s"] is None
        assert row["winner"]["impl"] != "kernels:wrong" and row["best_jax"]["impl"] != "kernels:wrong"
    for row, r in results_of(doc, "kernels:cropped"):  # the gradients: jax.vjp refuses the reference's dy
        assert r["status"] == ("mismatch" if row["mode"] == "forward" else "error") and r["time_s"] is None
        assert re.search(r"output shape \(2, \d, \d, \d\) != reference \(2, \d, \d, \d\)" if row["mode"] == "forward"
                         else "shape", r["message"]), r
    assert "kernels:wrong/NHWC MISMATCH" in done.stdout and "kernels:good/NHWC " in done.stdout
    table = (out / "conv.md").read_text()
    assert "kernels:good/NHWC" in table and "MISMATCH" in table
    assert not any("kernels" in impl for impl in (out / "conv_table.json").read_text().split('"'))


def test_a_custom_vjp_rule_is_what_is_checked(sweep):
    """``custom``'s output is right and its custom_vjp's gradients are doubled: forward agrees, the
    gradients do not (jax.vjp through the kernel would have found the right ones)."""
    done, doc, _ = sweep
    for row, r in results_of(doc, "kernels:custom"):
        assert r["status"] == ("ok" if row["mode"] == "forward" else "mismatch"), (row["mode"], r)


def test_a_kernel_raising_on_a_shape_is_that_rows_error(sweep):
    done, doc, _ = sweep
    for row, r in results_of(doc, "kernels:ungrouped"):
        if row["groups"] == 1:
            assert r["status"] == "ok" and r["time_s"] > 0
        else:
            assert r["status"] == "error" and r["message"] == "NotImplementedError: groups=2" and r["time_s"] is None


def test_the_documented_example_is_the_example_file_and_agrees(sweep):
    assert doc_example() == EXAMPLE.read_text()
    done, doc, _ = sweep
    for name in ("my_kernels:conv", "my_kernels:conv_xla_grads"):
        for row, r in results_of(doc, name):
            assert r["status"] == "ok" and r["time_s"] > 0, (name, row["shape"], row["dtype"], row["mode"], r)


def test_the_example_kernel_takes_a_negative_padding_side():
    """PixelCNN's causal convs crop the input's last rows with one (the pixelcnn shape sets have them)."""
    import jax
    import numpy as np

    fn = conv_runners.load_kernel(f"{EXAMPLE}:conv").fn
    x = jax.random.normal(jax.random.key(0), (2, 6, 5, 3))
    kernel = jax.random.normal(jax.random.key(1), (1, 3, 3, 4))
    padding = ((1, -1), (1, 1))
    want = jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(fn(x, kernel, (1, 1), padding, (1, 1), 1), want, rtol=1e-5, atol=1e-5)


BAD = [  # (--impl, the start of the message after "jaxconv: error: --impl '...': ")
    ("kernels.py", "expected MODULE:FUNCTION"),
    ("kernels.py:", "expected MODULE:FUNCTION"),
    ("missing.py:conv", "no file missing.py"),
    ("no_such_module_xyz:conv", "no module named 'no_such_module_xyz'"),
    ("kernels.py:nope", "kernels.py has no 'nope' (its functions: cropped, custom, good, two_args, ungrouped, wrong)"),
    ("kernels.py:not_a_function", "not_a_function is not callable"),
    ("kernels.py:two_args", "two_args(x, kernel) cannot be called as fn(x, kernel, strides, padding, dilation"),
    ("broken.py:conv", "importing broken.py failed: SyntaxError"),
    ("needs.py:conv", "importing needs.py failed: ModuleNotFoundError: No module named 'no_such_dependency_xyz'"),
]


@pytest.mark.parametrize("spec,message", BAD, ids=[b[0] for b in BAD])
def test_a_bad_impl_is_one_line_exit_2_and_nothing_written(spec, message, tmp_path, monkeypatch, capfd):
    (tmp_path / "kernels.py").write_text(KERNELS)
    (tmp_path / "broken.py").write_text("def conv(x, kernel:\n")
    (tmp_path / "needs.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "conv", "--quick", "--impl", "kernels.py:good", "--impl", spec, "--out", "res"]) == 2
    out, err = capfd.readouterr()
    assert err.startswith(f"jaxconv: error: --impl {spec!r}: {message}") and err.count("\n") == 1, err
    assert out == "" and not (tmp_path / "res").exists()


def test_bad_impl_from_the_command_and_other_mistakes(tmp_path, monkeypatch, capfd):
    (tmp_path / "kernels.py").write_text(KERNELS)
    done = jaxconv_command("bench", "conv", "--quick", "--impl", "kernels", "--out", "res", cwd=tmp_path)
    assert done.returncode == ConfigError.exit_code and done.stdout == ""
    assert done.stderr.startswith("jaxconv: error: --impl 'kernels': expected MODULE:FUNCTION")
    assert done.stderr.count("\n") == 1 and not (tmp_path / "res").exists()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "kernels.py").write_text(KERNELS)
    for argv, message in [
            (["conv", "--impl", "kernels.py:good", "--impl", "sub/kernels.py:good"],
             "--impl 'sub/kernels.py:good': named 'kernels:good' like --impl 'kernels.py:good'"),
            (["sample", "--impl", "kernels.py:good"], "--impl is for jaxconv bench conv (or all), not sample"),
            (["conv", "--impls", "kernels:good"], "unknown implementation(s) kernels:good")]:
        assert cli.main(["bench", *argv, "--quick", "--out", "res"]) == 2
        out, err = capfd.readouterr()
        assert err.startswith(f"jaxconv: error: {message}") and err.count("\n") == 1, err
        assert not (tmp_path / "res").exists()


def test_an_importable_module_and_an_attribute_path(tmp_path, monkeypatch):
    (tmp_path / "user_conv_kernels.py").write_text(KERNELS + "\n\nclass Kernels:\n    good = staticmethod(good)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    kernel = conv_runners.load_kernel("user_conv_kernels:good")
    assert (kernel.name, kernel.source, kernel.fn.__name__) == ("user_conv_kernels:good", "user_conv_kernels:good",
                                                                  "good")
    assert conv_runners.load_kernel("user_conv_kernels:Kernels.good").name == "user_conv_kernels:Kernels.good"
    assert conv_runners.load_kernel(f"{EXAMPLE}:conv").name == "my_kernels:conv"
    assert conv_runners.load_kernel(f"{EXAMPLE}:conv").fn is conv_runners.load_kernel(f"{EXAMPLE}:conv").fn
    with pytest.raises(ConfigError, match="not callable"):
        conv_runners.load_kernel("user_conv_kernels:not_a_function")
