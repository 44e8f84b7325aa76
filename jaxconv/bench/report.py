"""Markdown tables and plots of benchmark results, and the README summary.

``render(doc, out_dir)`` writes NAME.md (``MARKDOWN[name](doc)``) and NAME*.png (``PLOTS[name](doc,
out_dir)``, matplotlib's Agg backend) for one results document (``jaxconv.bench.results``: the schema and
NAME.json) and returns the paths; ``regenerate(dir)`` does so for every NAME.json of a directory;
``summary_markdown(dir)`` is the README's table built from a results directory's JSON files;
``update_readme(readme, text)`` puts it between the README's ``<!-- bench:begin -->`` and
``<!-- bench:end -->`` markers.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from jaxconv.bench.results import BENCHMARKS, load
from jaxconv.errors import ConfigError, StorageError

SECTION_ORDER = [(m, d) for d in ("float32", "bfloat16")
                 for m in ("forward_backward", "forward", "input_grad", "kernel_grad")]
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _g(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:,.0f}"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _header(doc: dict, title: str) -> list[str]:
    env, peaks = doc["environment"], doc["peaks"]
    mm = peaks["matmul_flops_per_s"]
    torch = env.get("torch") or {}
    lines = [f"# {title}: {doc['device']}", "",
             f"{doc['created']}, `{doc['command']}`; jax {env.get('jax')}, "
             + (f"PyTorch {torch.get('version')} ({torch.get('threads')} threads)" if torch else "no PyTorch")
             + f"; {env.get('device_kind')} x{env.get('device_count')}, {env.get('cpu_model')} "
               f"({env.get('cpu_cores')} cores{', ' + env['cpu_vector_isa'] if env.get('cpu_vector_isa') else ''}).",
             "",
             f"Measured peaks: {_g(mm['float32'] / 1e9)} GFLOP/s float32, {_g(mm['bfloat16'] / 1e9)} GFLOP/s "
             f"bfloat16 (XLA's matmul, or oneDNN's conv where faster); memory bandwidth "
             f"{_g(peaks['memory_bytes_per_s'] / 1e9)} GB/s.", ""]
    if doc.get("quick"):
        lines += ["**--quick run: tiny sizes, the numbers mean nothing.**", ""]
    if doc.get("targets"):
        lines += ["| target | value | goal | met |", "|---|---|---|---|"]
        for t in doc["targets"]:
            met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
            lines.append(f"| {t['name']} | {_g(t['value'])} | {t['goal']} | {met} |")
        lines.append("")
    return lines


def _footer(doc: dict) -> list[str]:
    return ["Notes: " + "; ".join(doc.get("notes", [])) + "."] if doc.get("notes") else []


# ----------------------------------------------------------------------------------------------
# conv


def _variant(r: dict) -> str:
    return f"{r['impl']}/{r['layout']}"


def _layer(row: dict) -> str:
    return row["shape"]


def conv_markdown(doc: dict) -> str:
    lines = _header(doc, "Conv layers")
    rows = doc["rows"]
    for mode, dtype in SECTION_ORDER:
        sect = [r for r in rows if r["mode"] == mode and r["dtype"] == dtype]
        if not sect:
            continue
        lines += [f"## {mode}, {dtype}", "",
                  "| layer | batch | GFLOP | FLOP/byte | default | GFLOP/s | % peak | % roofline | PyTorch GFLOP/s "
                  "| default / PyTorch | winner (vs default) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in sect:
            res = {_variant(r): r for r in row["results"]}
            default = res.get(f"{row['default_impl']}/NHWC", {})
            torch_rate = row["flops"] / row["torch_best_s"] if row["torch_best_s"] else None
            winner = row["winner"]
            win = "-"
            if winner:
                w = res[f"{winner['impl']}/{winner['layout']}"]
                speed = default["time_s"] / w["time_s"] if default.get("time_s") else None
                win = f"{_variant(w)} ({_x(speed)})"
            lines.append(f"| {_layer(row)} | {row['batch']} | {_g(row['flops'] / 1e9)} | {_g(row['intensity'])} | "
                         f"{row['default_impl']} | {_g((default.get('flops_per_s') or 0) / 1e9)} | "
                         f"{_pct(default.get('frac_peak'))} | {_pct(default.get('frac_roofline'))} | "
                         f"{_g(torch_rate / 1e9 if torch_rate else None)} | {_x(row['default_vs_torch'])} | {win} |")
        variants = []
        for row in sect:
            for r in row["results"]:
                if _variant(r) not in variants:
                    variants.append(_variant(r))
        lines += ["", f"All variants, {mode} {dtype}: ms per call (PyTorch's best time / this time).", "",
                  "| layer | batch | " + " | ".join(variants) + " |", "|---|---|" + "---|" * len(variants)]
        for row in sect:
            res = {_variant(r): r for r in row["results"]}
            cells = []
            for v in variants:
                r = res.get(v)
                if r is None:
                    cells.append("")
                elif r["status"] == "ok":
                    cells.append(f"{r['time_s'] * 1e3:.3g} ({_x(r['vs_torch'])})" if r["vs_torch"] else
                                 f"{r['time_s'] * 1e3:.3g}")
                else:
                    cells.append(r["status"].upper())
            lines.append(f"| {_layer(row)} | {row['batch']} | " + " | ".join(cells) + " |")
        lines.append("")
    bad = [(row, r) for row in rows for r in row["results"] if r["status"] in ("mismatch", "error")]
    if bad:
        lines += ["## Failed agreement checks and errors", ""]
        lines += [f"- {row['shape']} b{row['batch']} {row['dtype']} {row['mode']}: {_variant(r)} {r['status']}: "
                  f"{r['message']}" for row, r in bad]
        lines.append("")
    return "\n".join(lines + _footer(doc)) + "\n"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def conv_plots(doc: dict, out_dir: Path) -> list[Path]:
    plt = _plt()
    rows = doc["rows"]
    written = []
    sections = [(m, d) for m, d in SECTION_ORDER if any(r["mode"] == m and r["dtype"] == d for r in rows)]
    for mode, dtype in sections if any(r["torch_best_s"] for r in rows) else []:
        sect = [r for r in rows if r["mode"] == mode and r["dtype"] == dtype]
        fig, ax = plt.subplots(figsize=(8, max(2.5, 0.22 * len(sect) + 1.2)))
        labels = [f"{r['shape']} b{r['batch']}" for r in sect]
        y = range(len(sect))
        nan = float("nan")
        default = [r["default_vs_torch"] or nan for r in sect]
        best = []
        for r in sect:
            res = {_variant(x): x for x in r["results"]}
            bj = r["best_jax"]
            best.append((res[f"{bj['impl']}/{bj['layout']}"]["vs_torch"] or nan) if bj else nan)
        ax.barh([i - 0.2 for i in y], default, height=0.4, label="jaxconv default path")
        ax.barh([i + 0.2 for i in y], best, height=0.4, label="best JAX variant")
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_yticks(list(y), labels, fontsize=6)
        ax.set_ylim(len(sect) - 0.5, -0.5)
        ax.set_xlabel("PyTorch's best time / this time (> 1: faster than PyTorch)")
        ax.set_title(f"{doc['device']}: {mode}, {dtype}", fontsize=9)
        ax.legend(fontsize=7)
        path = _save(plt, fig, Path(out_dir) / f"conv_vs_torch_{mode}_{dtype}.png")
        written.append(path)
    dtypes = [d for d in ("float32", "bfloat16") if any(r["dtype"] == d for r in rows)]
    if dtypes:
        fig, axes = plt.subplots(1, len(dtypes), figsize=(6 * len(dtypes), 4.5), squeeze=False)
        peaks = doc["peaks"]
        for ax, dtype in zip(axes[0], dtypes):
            sect = [r for r in rows if r["dtype"] == dtype]
            for mode, marker in (("forward", "o"), ("forward_backward", "s")):
                pts = [(r["intensity"], x["flops_per_s"], x["framework"]) for r in sect if r["mode"] == mode
                       for x in r["results"] if x["status"] == "ok"
                       and ((x["impl"], x["layout"]) == (r["default_impl"], "NHWC")
                            or (x["framework"] == "torch" and x["time_s"] == r["torch_best_s"]))]
                for fw, color in (("jax", "C0"), ("torch", "C3")):
                    sel = [(i, f) for i, f, w in pts if w == fw]
                    if sel:
                        ax.scatter(*zip(*sel), marker=marker, s=14, color=color, alpha=0.7,
                                   label=f"{'jaxconv default' if fw == 'jax' else 'PyTorch best'}, {mode}")
            intens = [r["intensity"] for r in sect] or [1.0]
            xs = [min(intens) / 2 * 1.5 ** k for k in range(int(math.log(max(intens) * 4 / min(intens), 1.5)) + 2)]
            peak = peaks["matmul_flops_per_s"][dtype]
            ax.plot(xs, [min(peak, x * peaks["memory_bytes_per_s"]) for x in xs], "k-", lw=1, label="roofline (measured)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("arithmetic intensity (FLOP/byte)")
            ax.set_ylabel("FLOP/s")
            ax.set_title(f"{doc['device']}, {dtype}", fontsize=9)
            ax.legend(fontsize=6)
        path = _save(plt, fig, Path(out_dir) / "conv_roofline.png")
        written.append(path)
    return written


# ----------------------------------------------------------------------------------------------
# sample


def sample_markdown(doc: dict) -> str:
    lines = _header(doc, "Sampling")
    lines += ["| preset | image | batch | naive img/s (extrapolated from) | cached img/s | speed-up | agree | "
              "cached compile s | cached MFLOP/image | cached GFLOP/s (of the peak) | forward pass img/s | "
              "cached cost, forward passes |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        n, c, f = r["naive"], r["cached"], r.get("forward")  # flops and forward: absent in older results
        flops = (f"{_g(r['flops_per_image'] / 1e6)} | {_g(c['flops_per_s'] / 1e9)} ({_pct(c.get('frac_peak'))})"
                 if "flops_per_image" in r else "- | -")
        passes = f"{c['forward_passes']:.2f}" if "forward_passes" in c else "-"
        lines.append(f"| {r['preset']} | {'x'.join(map(str, r['image']))} | {r['batch']} | "
                     f"{_g(n['images_per_s'])} ({n['variables_timed']} of {n['variables_total']} variables) | "
                     f"{_g(c['images_per_s'])} | {r['speedup']:.1f}x | "
                     f"{'yes' if r['agree'] else ('-' if r['agree'] is None else '**no**')} | "
                     f"{c['compile_s']:.1f} | {flops} | {_g(f['images_per_s']) if f else '-'} | {passes} |")
    return "\n".join(lines + [""] + _footer(doc)) + "\n"


def sample_plots(doc: dict, out_dir: Path) -> list[Path]:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    presets = list(dict.fromkeys(r["preset"] for r in doc["rows"]))
    for k, preset in enumerate(presets):
        rows = sorted((r for r in doc["rows"] if r["preset"] == preset), key=lambda r: r["batch"])
        b = [r["batch"] for r in rows]
        ax.plot(b, [r["cached"]["images_per_s"] for r in rows], "-o", color=f"C{k}", label=f"{preset} cached")
        ax.plot(b, [r["naive"]["images_per_s"] for r in rows], "--x", color=f"C{k}", label=f"{preset} naive (extrap.)")
    return [_save_log_log(plt, fig, ax, Path(out_dir) / "sample.png", xlabel="batch size", ylabel="images/s",
                          title=f"Sampling, {doc['device']}")]


# ----------------------------------------------------------------------------------------------
# train


def train_markdown(doc: dict) -> str:
    lines = _header(doc, "Training throughput")
    lines += ["| preset | framework | dtype | devices | batch | img/s | step ms | first step s | MFU | vs PyTorch |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['preset']} | {r['framework']} | {r['dtype']} | {r['devices']} | {r['batch']} | "
                     f"{_g(r['images_per_s'], 4)} | {r['step_s'] * 1e3:.3g} | {r['compile_s']:.2f} | {_pct(r['mfu'])} | "
                     f"{_x(r['vs_torch'])} |")
    return "\n".join(lines + [""] + _footer(doc)) + "\n"


def train_plots(doc: dict, out_dir: Path) -> list[Path]:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    keys = list(dict.fromkeys((r["preset"], r["dtype"], r["batch"]) for r in doc["rows"] if r["framework"] == "jax"))
    for k, (preset, dtype, batch) in enumerate(keys):
        rows = sorted((r for r in doc["rows"] if r["framework"] == "jax" and (r["preset"], r["dtype"], r["batch"])
                       == (preset, dtype, batch)), key=lambda r: r["devices"])
        ax.plot([r["devices"] for r in rows], [r["images_per_s"] for r in rows], "-o", color=f"C{k % 10}",
                label=f"{preset} {dtype} b{batch}")
    for r in doc["rows"]:
        if r["framework"] == "torch":
            ax.scatter([r["devices"]], [r["images_per_s"]], marker="*", s=60, color="k")
    return [_save_log_log(plt, fig, ax, Path(out_dir) / "train.png", xlabel="devices", x_base=2,
                          ylabel="images/s (stars: PyTorch, same network)",
                          title=f"Training throughput, {doc['device']}")]


def _save_log_log(plt, fig, ax, path: Path, *, xlabel: str, ylabel: str, title: str, x_base: int = 10) -> Path:
    """Log-log axes with their labels, title and legend, saved to ``path``."""
    ax.set_xscale("log", base=x_base)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6)
    return _save(plt, fig, path)


MARKDOWN = {"conv": conv_markdown, "sample": sample_markdown, "train": train_markdown}
PLOTS = {"conv": conv_plots, "sample": sample_plots, "train": train_plots}


def render(doc: dict, out_dir: Path, plots: bool = True) -> list[Path]:
    """NAME.md (and the plots) for one document; returns the paths written."""
    name = doc["benchmark"]
    md = Path(out_dir) / f"{name}.md"
    md.write_text(MARKDOWN[name](doc))
    return [md, *(PLOTS[name](doc, Path(out_dir)) if plots else [])]


# ----------------------------------------------------------------------------------------------
# README summary


def _geomean(values: list[float]) -> float | None:
    values = [v for v in values if v and v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def summary_markdown(results_dir: Path) -> str:
    """The README table for one results directory (the JSON files present)."""
    results_dir = Path(results_dir)
    docs = {name: load(results_dir / f"{name}.json") for name in BENCHMARKS
            if (results_dir / f"{name}.json").exists()}
    if not docs:
        return f"_No results in {results_dir} yet: run `jaxconv bench all`._\n"
    lines = _summary_header(results_dir, docs)
    for name, summary in (("conv", _conv_summary), ("sample", _sample_summary), ("train", _train_summary)):
        if name in docs:
            lines += [*summary(docs[name]), ""]
    targets = [t for d in docs.values() for t in d.get("targets", [])]
    if targets:
        lines += [*_targets_summary(targets), ""]
    return "\n".join(lines)


def _summary_header(results_dir: Path, docs: dict) -> list[str]:
    """The machine, software versions and measured peaks, and links to each NAME.md."""
    any_doc = next(iter(docs.values()))
    env, peaks = any_doc["environment"], any_doc["peaks"]
    mm = peaks["matmul_flops_per_s"]
    machine = env.get("cpu_model") if env["backend"] == "cpu" else env.get("device_kind")
    lines = [f"Results for `{any_doc['device']}` ({machine}), "
             f"jax {env.get('jax')}, PyTorch {(env.get('torch') or {}).get('version', 'not installed')}; measured "
             f"peaks {_g(mm['float32'] / 1e9)} GFLOP/s float32, {_g(mm['bfloat16'] / 1e9)} GFLOP/s bfloat16 matmul, "
             f"{_g(peaks['memory_bytes_per_s'] / 1e9)} GB/s memory bandwidth. Details: "
             + ", ".join(f"[{n}.md]({(results_dir / f'{n}.md').as_posix()})" for n in docs) + ".", ""]
    if any(d.get("quick") for d in docs.values()):
        lines += ["**Placeholder: these are --quick numbers (tiny sizes, meaningless).**", ""]
    return lines


def _conv_summary(doc: dict) -> list[str]:
    """Per shape set, float32 forward + backward: the default's and the best JAX variant's speed vs PyTorch."""
    rows = [r for r in doc["rows"] if r["mode"] == "forward_backward" and r["dtype"] == "float32"]
    lines = ["Conv layers, float32, forward + backward (`conv.md`):", "",
             "| shape set | layers x batches | default / PyTorch (geo-mean) | worst | best JAX variant / PyTorch "
             "(geo-mean) | where an alternative beats the default |", "|---|---|---|---|---|---|"]
    for s in dict.fromkeys(r["shape"].split(":")[0] for r in rows):
        sel = [r for r in rows if r["shape"].split(":")[0] == s]
        ratios = [r["default_vs_torch"] for r in sel]
        worst = min((r for r in sel if r["default_vs_torch"]), key=lambda r: r["default_vs_torch"], default=None)
        best, wins = [], []
        for r in sel:
            ratio, win = _best_jax(r)
            best += [ratio] if ratio is not None else []
            wins += [win] if win else []
        worst_txt = f"{_x(worst['default_vs_torch'])} ({worst['shape'].split(':', 1)[1]})" if worst else "-"
        lines.append(f"| {s} | {len(sel)} | {_x(_geomean(ratios))} | {worst_txt} | {_x(_geomean(best))} | "
                     f"{len(wins)} of {len(sel)}"
                     + (f" ({', '.join(sorted(set(w.split()[0] for w in wins)))})" if wins else "")
                     + " |")
    return lines


def _best_jax(row: dict) -> tuple[float | None, str | None]:
    """A conv row's best JAX variant: its speed vs PyTorch, and "impl/layout GAINx" when it beats the
    default (NHWC) by more than 10%."""
    bj = row["best_jax"]
    if not bj:
        return None, None
    res = {_variant(x): x for x in row["results"]}
    best = res[f"{bj['impl']}/{bj['layout']}"]
    if (bj["impl"], bj["layout"]) == (row["default_impl"], "NHWC"):
        return best["vs_torch"], None
    default = res.get(f"{row['default_impl']}/NHWC", {})
    gain = default["time_s"] / best["time_s"] if default.get("time_s") else 0
    return best["vs_torch"], f"{bj['impl']}/{bj['layout']} {gain:.1f}x" if gain > 1.1 else None


def _sample_summary(doc: dict) -> list[str]:
    """Cached sampler images/s and its speed-up over the naive one, per preset and batch."""
    rows = doc["rows"]
    batches = sorted({r["batch"] for r in rows})
    lines = ["Sampling, cached vs naive (`sample.md`; naive extrapolated from a fixed number of variables):", "",
             "| preset | " + " | ".join(f"batch {b}: cached img/s (speed-up)" for b in batches) + " |",
             "|---|" + "---|" * len(batches)]
    for preset in dict.fromkeys(r["preset"] for r in rows):
        cells = []
        for b in batches:
            r = next((r for r in rows if r["preset"] == preset and r["batch"] == b), None)
            cells.append(f"{_g(r['cached']['images_per_s'])} ({r['speedup']:.0f}x)" if r else "-")
        lines.append(f"| {preset} | " + " | ".join(cells) + " |")
    return lines


def _train_summary(doc: dict) -> list[str]:
    """Per JAX (preset, dtype, batch): one device's images/s, MFU and first step, and the most devices'."""
    rows = [r for r in doc["rows"] if r["framework"] == "jax"]
    lines = ["Training (`train.md`; batch = global batch):", "",
             "| preset | dtype | batch | img/s, 1 device | MFU | first step s | vs PyTorch | img/s, most devices |",
             "|---|---|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["preset"], r["dtype"], r["batch"]) for r in rows):
        sel = sorted((r for r in rows if (r["preset"], r["dtype"], r["batch"]) == key), key=lambda r: r["devices"])
        one, most = sel[0], sel[-1]
        lines.append(f"| {' | '.join(map(str, key))} | {_g(one['images_per_s'], 4)} | {_pct(one['mfu'])} | "
                     f"{one['compile_s']:.1f} | {_x(one['vs_torch'])} | "
                     f"{_g(most['images_per_s'], 4)} ({most['devices']} device{'s' if most['devices'] > 1 else ''}) |")
    return lines


def _targets_summary(targets: list[dict]) -> list[str]:
    lines = ["| target | value | goal | met |", "|---|---|---|---|"]
    for t in targets:
        lines.append(f"| {t['name']} | {_g(t['value'])} | {t['goal']} | "
                     f"{ {True: 'yes', False: '**no**', None: '-'}[t['met']]} |")
    return lines


def update_readme(readme: Path, text: str) -> None:
    """Replaces what is between the README's bench markers with ``text``."""
    readme = Path(readme)
    try:
        content = readme.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--readme {readme}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    if BEGIN not in content or END not in content:
        raise ConfigError(f"--readme {readme} has no {BEGIN} ... {END} markers to write the table between")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    try:
        readme.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text.strip()}\n{END}", content, count=1))
    except OSError as e:
        raise StorageError(f"cannot write {readme}: {e.strerror or e}") from None


def regenerate(results_dir: Path, plots: bool = True) -> list[Path]:
    """Rebuilds every NAME.md (and plot) of a results directory from its JSON files."""
    written = []
    for name in BENCHMARKS:
        path = Path(results_dir) / f"{name}.json"
        if path.exists():
            written += render(load(path), Path(results_dir), plots)
    return written

