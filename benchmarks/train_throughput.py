"""Training throughput: ``jaxconv bench train`` (this script is a thin alias kept for old links).

    python benchmarks/train_throughput.py [jaxconv bench options, e.g. --quick --presets lenet5_modern]

Results: ``benchmarks/results/<device>/train.{json,md,png}``. See the README's Benchmarks section.
"""

import sys

from jaxconv.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "train", *sys.argv[1:]]))
