"""Train-step time of one bench preset under several config variants, timed in turns in one process.

Each variant is ``--set`` overrides of the preset's bench config (``jaxconv.bench.train.run_config``: the
run's real jitted train step on one fixed batch); every round runs a few steps of each variant in turn,
so the machine's drift (up to 2x within minutes on a shared VM) hits all variants alike. It prints each
variant's median step time. An empty variant is the defaults.

    python tools/ab_step.py pixelcnn_mnist --batch 64 '' 'conv.impl=xla' 'conv.table=t.json;conv.rules=none'

A variant may also name the library fusions XLA:CPU hands to YNNPACK (the value of the XLA option
``xla_cpu_experimental_ynn_fusion_type`` that ``conv.xla_cpu=eigen`` sets; lower case, without the
``LIBRARY_FUSION_TYPE_`` prefix), e.g. ``'ynn=individual_dot,reduce,eltwise'``; and ``'epilogue=xla'``: a
conv's bias and ReLU added by XLA after the conv even where oneDNN would apply them in its call
(``jaxconv.models.conv_impls.apply``).
"""

from __future__ import annotations

import argparse
import statistics
import time

from jaxconv import hostmem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preset")
    parser.add_argument("variants", nargs="+", help="';'-separated KEY=VALUE overrides per variant ('' = defaults)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="steps of each variant per round")
    args = parser.parse_args()
    for part in (s for variant in args.variants for s in variant.split(";")):
        if part.startswith("epilogue=") and part != "epilogue=xla":
            parser.error(f"{part!r}: the only epilogue variant is 'epilogue=xla'")
    hostmem.keep_freed_memory()  # as jaxconv.cli does, before XLA's threads allocate

    import jax  # after the memory setting

    from jaxconv.bench.train import run_config, train_step_call
    from jaxconv.config import apply_overrides
    from jaxconv.models import conv_impls, conv_policy

    def epilogue_by_xla(impl, x, kernel, strides, padding, dilation, groups, bias=None, relu=False):
        return conv_impls._bias_relu(default_apply(impl, x, kernel, strides, padding, dilation, groups), bias, relu)

    steps, times = [], []
    default_ynn, default_apply = conv_policy._EIGEN_CONVS, conv_impls.apply
    for variant in args.variants:
        overrides = [s for s in variant.split(";") if s and not s.startswith(("ynn=", "epilogue="))]
        ynn = [s[len("ynn="):] for s in variant.split(";") if s.startswith("ynn=")]
        # Set for this variant's tracing only, like the YNNPACK option below.
        conv_impls.apply = epilogue_by_xla if "epilogue=xla" in variant.split(";") else default_apply
        # The option is a module constant, not a config field: set for this variant's compilation only.
        conv_policy._EIGEN_CONVS = ((default_ynn[0][0], ",".join(
            f"LIBRARY_FUSION_TYPE_{t.upper()}" for t in ynn[0].split(","))),) if ynn else default_ynn
        step, _ = train_step_call(apply_overrides(run_config(args.preset, args.batch, 1, "float32", False), overrides))
        for _ in range(3):  # compile and warm up
            jax.block_until_ready(step())
        conv_policy._EIGEN_CONVS, conv_impls.apply = default_ynn, default_apply
        steps.append(step)
        times.append([])
    for _ in range(args.rounds):
        for step, runs in zip(steps, times):
            for _ in range(args.steps):
                start = time.perf_counter()
                jax.block_until_ready(step())
                runs.append(time.perf_counter() - start)
    for variant, runs in zip(args.variants, times):
        print(f"{variant or '(defaults)':50s} median {statistics.median(runs) * 1e3:8.1f} ms per step "
              f"({args.batch / statistics.median(runs):,.0f} img/s)")


if __name__ == "__main__":
    main()
