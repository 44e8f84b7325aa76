"""Sampling speed, naive vs cached PixelCNN samplers: ``jaxconv bench sample``.

    python benchmarks/sampling_speed.py [jaxconv bench options, e.g. --quick --batch-sizes 1,64]

Results: ``benchmarks/results/<device>/sample.{json,md,png}``. See the README's Benchmarks section.
"""

import sys

from jaxconv.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "sample", *sys.argv[1:]]))
