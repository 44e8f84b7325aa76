"""Training throughput and MFU per preset and device count, vs PyTorch: ``jaxconv bench train``.

    python benchmarks/train_throughput.py [jaxconv bench options, e.g. --quick --presets lenet5_modern]

Results: ``benchmarks/results/<device>/train.{json,md,png}``. See the README's Benchmarks section.
"""

import sys

from jaxconv.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "train", *sys.argv[1:]]))
