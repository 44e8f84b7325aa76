"""README's quick start runs as pasted: every line of its block, in order, in an empty directory, through
the installed command (``python -m jaxconv``, the entry point of the ``jaxconv`` script)."""

import shlex
import subprocess
import sys

from PIL import Image

from conftest import REPO

BEGIN, END = "<!-- quickstart:begin -->", "<!-- quickstart:end -->"


def quickstart_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    block = text[text.index(BEGIN) + len(BEGIN):text.index(END)]
    lines = [line for line in block.splitlines() if line.strip() and not line.startswith("```")]
    commands = [shlex.split(line, comments=True) for line in lines]
    assert commands and all(c[0] == "jaxconv" for c in commands), lines
    return commands


def test_the_quick_start_runs_as_pasted(tmp_path):
    outputs = []
    for command in quickstart_commands():
        done = subprocess.run([sys.executable, "-m", "jaxconv", *command[1:]], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, (command, done.stderr)
        assert "Traceback" not in done.stderr and "terminate called" not in done.stderr, done.stderr
        outputs.append(done.stdout)
    train, evaluate = outputs[0], outputs[1]
    assert "lenet_modern_mnist: step 20, validation" in train and "accuracy" in evaluate
    smoke = tmp_path / "runs" / "lenet_modern_mnist-smoke"
    assert Image.open(smoke / "filters.png").size[0] > 100
    assert (tmp_path / "curves.png").exists() and (tmp_path / "curves.svg").exists()
    samples = Image.open(tmp_path / "runs" / "gated_pixelcnn_mnist-smoke" / "samples.png")
    assert samples.size == (8 * 29 + 1, 29 + 1)  # 8 digits of 28x28 with 1-pixel gutters, one row
