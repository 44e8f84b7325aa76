"""Conv layer sweep, every implementation vs PyTorch: ``jaxconv bench conv``.

    python benchmarks/conv_layers.py [jaxconv bench options, e.g. --shape 64,16,16,128,128,3,1,1]

Results: ``benchmarks/results/<device>/conv.{json,md}``, plots and ``conv_table.json``. See the README.
"""

import sys

from jaxconv.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "conv", *sys.argv[1:]]))
