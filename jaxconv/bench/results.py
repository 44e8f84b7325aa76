"""Result files: the versioned JSON schema, its validator, and NAME.json (tables and plots: ``report``).

A run of ``jaxconv bench NAME`` writes, in its results directory (``bench-results/<device>/``, or ``--out``):
``NAME.json`` (the data), ``NAME.md`` (tables) and ``NAME*.png`` (plots). ``jaxconv bench report DIR``
rebuilds the markdown and plots from the JSON files and prints ``summary_markdown``: the README table.

Schema, version ``SCHEMA_VERSION`` (``SCHEMAS[name]`` is its JSON Schema; ``validate`` checks a document):
every file is an object with

- ``schema_version`` (int), ``benchmark`` ("conv" | "sample" | "train"), ``created`` (UTC ISO 8601),
  ``command`` (the command line), ``quick`` (bool: tiny sizes, numbers meaningless), ``device`` (the
  results directory's name), ``environment`` (machine and software, ``jaxconv.bench.device.environment``),
  ``peaks`` (``matmul_flops_per_s`` {"float32", "bfloat16"}, ``memory_bytes_per_s``, ``measurements``),
  ``settings`` (the run's parameters), ``rows`` (below), ``targets`` (list of {name, value, goal, met}:
  the issue's goals, reported, never asserted) and ``notes`` (list of strings).
- conv rows, one per (shape, batch, dtype, mode): the layer (``shape``, ``kind`` "conv" | "masked",
  ``sources`` [preset:layer, ...], ``batch``, ``height``, ``width``, ``cin``, ``cout``, ``kh``, ``kw``,
  ``stride`` [h, w], ``dilation`` [h, w], ``padding`` [[top, bottom], [left, right]], ``groups``,
  ``mask`` null | "A" | "B", ``input_grad``: false for layers fed by the image, whose input gradient
  training never computes), ``dtype``, ``mode`` ("forward"; "forward_backward": the output, then the
  kernel gradient and, if ``input_grad``, the input gradient; "input_grad" or "kernel_grad": that one
  backward pass alone), ``flops`` (of the dense kernel: 2 * B * Ho * Wo * Cout * Cin / groups * kh * kw
  per pass: forward_backward is 3x, 2x without the input gradient), ``bytes`` (minimum traffic, each
  pass reading two of x, w, y (or dy) and writing the third: (x + w + y) * passes * itemsize),
  ``intensity`` (flops / bytes), ``peak_flops_per_s``,
  ``roofline_flops_per_s``, ``default_impl`` (what ``jaxconv.models.conv.choose`` picks), ``results``
  (one per implementation and layout: ``impl`` (a built-in's name, or a user kernel's "module:function",
  ``--impl``), ``framework`` "jax" | "torch", ``layout`` "NHWC" |
  "NCHW", ``status`` "ok" | "mismatch" | "error" | "skipped", ``error`` (max |out - ref| / max |ref| over
  the output or both gradients; ref: XLA in float32 at HIGHEST precision on the same data), ``message``,
  ``time_s`` (median per call), ``min_time_s``, ``runs_s``, ``compile_s`` (first call), ``flops_per_s``,
  ``frac_peak``, ``frac_roofline``, ``vs_torch`` (PyTorch's best time / this time; > 1 is faster)),
  ``winner``, ``best_jax`` ({impl, framework, layout} or null), ``torch_best_s``, ``default_vs_torch``.
  Only "ok" results (agreeing with the reference) are timed and can win.
- sample rows, one per (preset, batch): ``preset``, ``image`` [H, W, C], ``params``, ``batch``, ``naive``
  ({``variables_timed``, ``variables_total``, ``time_per_variable_s``, ``images_per_s``, ``extrapolated``
  (true: timed variables scaled to the whole image), ``compile_s``, ``runs_s``}), ``cached``
  ({``time_s``, ``images_per_s``, ``compile_s``, ``runs_s``}), ``speedup`` (cached / naive images/s),
  ``agree`` (the naive sampler redraws the cached sample's last variables identically; null if unchecked);
  optional (written since the cached sampler's FLOPs are reported): ``flops_per_image`` (the conv and matmul
  FLOPs the cached sampler runs per image, counted from its traced program with its loops' trip counts),
  ``cached.flops_per_s`` (flops_per_image * cached images/s), ``cached.frac_peak`` (that / the float32 matmul
  peak, null without peaks), ``cached.forward_passes`` (time per cached image / time per image of one
  whole-image forward pass at the same batch, timed alternately: the median of the repeats' ratios) and ``forward`` ({``time_s``, ``images_per_s``,
  ``flops_per_image``, ``runs_s``}: that forward pass).
- train rows, one per (preset, framework, dtype, devices, batch): ``preset``, ``framework``, ``dtype``,
  ``devices``, ``batch`` (global), ``images_per_s``, ``step_s``, ``compile_s`` (first step: tracing,
  compilation and one step), ``runs`` (images/s per repeat), ``flops_per_image`` (model FLOPs: 3x the
  forward pass's conv and matmul FLOPs), ``mfu`` (images/s * flops_per_image / peak of the dtype, the
  peak times the device count on accelerators; fake CPU devices share the host's one peak),
  ``final_loss``, ``vs_torch`` (this / PyTorch images/s for the same preset and batch, or null).
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
BENCHMARKS = ("conv", "sample", "train")


class SchemaError(ValueError):
    pass


# ----------------------------------------------------------------------------------------------
# Schema (a JSON Schema draft-07 subset) and its validator.

NUM = {"type": "number"}
INT = {"type": "integer"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
OPT_NUM = {"type": ["number", "null"]}
OPT_STR = {"type": ["string", "null"]}


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None, extra: bool = False) -> dict:
    return {"type": "object", "required": sorted(required), "properties": {**required, **(optional or {})},
            "additionalProperties": extra}


def _arr(items: dict, min_items: int = 0) -> dict:
    return {"type": "array", "items": items, "minItems": min_items}


PAIR = {**_arr(INT, 2), "maxItems": 2}
IMPL_REF = {"type": ["object", "null"], "required": ["impl", "framework", "layout"],
            "properties": {"impl": STR, "framework": STR, "layout": STR}, "additionalProperties": False}

CONV_RESULT = _obj({
    "impl": STR, "framework": {"enum": ["jax", "torch"]}, "layout": {"enum": ["NHWC", "NCHW"]},
    "status": {"enum": ["ok", "mismatch", "error", "skipped"]}, "error": OPT_NUM, "message": OPT_STR,
    "time_s": OPT_NUM, "min_time_s": OPT_NUM, "runs_s": _arr(NUM), "compile_s": OPT_NUM, "flops_per_s": OPT_NUM,
    "frac_peak": OPT_NUM, "frac_roofline": OPT_NUM, "vs_torch": OPT_NUM})

CONV_ROW = _obj({
    "shape": STR, "kind": {"enum": ["conv", "masked"]}, "sources": _arr(STR), "batch": INT, "height": INT,
    "width": INT, "cin": INT, "cout": INT, "kh": INT, "kw": INT, "stride": PAIR, "dilation": PAIR,
    "padding": {**_arr(PAIR, 2), "maxItems": 2}, "groups": INT, "mask": {"enum": [None, "A", "B"]},
    "input_grad": BOOL, "dtype": {"enum": ["float32", "bfloat16"]},
    "mode": {"enum": ["forward", "forward_backward", "input_grad", "kernel_grad"]},
    "flops": NUM, "bytes": NUM, "intensity": NUM, "peak_flops_per_s": NUM, "roofline_flops_per_s": NUM,
    "default_impl": STR, "results": _arr(CONV_RESULT, 1), "winner": IMPL_REF, "best_jax": IMPL_REF,
    "torch_best_s": OPT_NUM, "default_vs_torch": OPT_NUM})

SAMPLE_ROW = _obj({
    "preset": STR, "image": {**_arr(INT, 3), "maxItems": 3}, "params": INT, "batch": INT,
    "naive": _obj({"variables_timed": INT, "variables_total": INT, "time_per_variable_s": NUM, "images_per_s": NUM,
                   "extrapolated": BOOL, "compile_s": NUM, "runs_s": _arr(NUM, 1)}),
    "cached": _obj({"time_s": NUM, "images_per_s": NUM, "compile_s": NUM, "runs_s": _arr(NUM, 1)},
                   {"flops_per_s": NUM, "frac_peak": OPT_NUM, "forward_passes": NUM}),
    "speedup": NUM, "agree": {"type": ["boolean", "null"]}},
    # Added later (results written before them stay valid):
    {"flops_per_image": NUM,
     "forward": _obj({"time_s": NUM, "images_per_s": NUM, "flops_per_image": NUM, "runs_s": _arr(NUM, 1)})})

TRAIN_ROW = _obj({
    "preset": STR, "framework": {"enum": ["jax", "torch"]}, "dtype": {"enum": ["float32", "bfloat16"]},
    "devices": INT, "batch": INT, "images_per_s": NUM, "step_s": NUM, "compile_s": NUM, "runs": _arr(NUM, 1),
    "flops_per_image": OPT_NUM, "mfu": OPT_NUM, "final_loss": OPT_NUM, "vs_torch": OPT_NUM})

PEAKS = _obj({"matmul_flops_per_s": _obj({"float32": NUM, "bfloat16": NUM}), "memory_bytes_per_s": NUM,
              "measurements": _arr({"type": "object"})})

TARGET = _obj({"name": STR, "value": OPT_NUM, "goal": STR, "met": {"type": ["boolean", "null"]}})


def _document(benchmark: str, row: dict) -> dict:
    return _obj({
        "schema_version": {"const": SCHEMA_VERSION}, "benchmark": {"const": benchmark}, "created": STR,
        "command": STR, "quick": BOOL, "device": STR, "environment": {"type": "object", "required": ["backend"]},
        "peaks": PEAKS, "settings": {"type": "object"}, "rows": _arr(row), "targets": _arr(TARGET),
        "notes": _arr(STR)})


SCHEMAS = {"conv": _document("conv", CONV_ROW), "sample": _document("sample", SAMPLE_ROW),
           "train": _document("train", TRAIN_ROW)}

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _check(value: Any, schema: dict, path: str, errors: list[str]) -> None:
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: expected {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not one of {schema['enum']}")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = False
        for t in types:
            if t == "number":
                ok |= isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            elif t == "integer":
                ok |= isinstance(value, int) and not isinstance(value, bool)
            else:
                ok |= isinstance(value, _TYPES[t])
        if not ok:
            errors.append(f"{path}: expected {'/'.join(types)}, got {type(value).__name__} {value!r:.60}")
            return
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing {key!r}")
        props = schema.get("properties", {})
        for key, sub in value.items():
            if key in props:
                _check(sub, props[key], f"{path}.{key}", errors)
            elif schema.get("additionalProperties", True) is False:
                errors.append(f"{path}: unexpected key {key!r}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            errors.append(f"{path}: {len(value)} items, expected {schema.get('minItems', 0)}.."
                          f"{schema.get('maxItems', 'any')}")
        if "items" in schema:
            for i, item in enumerate(value):
                _check(item, schema["items"], f"{path}[{i}]", errors)


def validate(doc: dict, benchmark: str | None = None) -> None:
    """Raises ``SchemaError`` listing every violation of the document's schema."""
    name = benchmark or (doc.get("benchmark") if isinstance(doc, dict) else None)
    if name not in SCHEMAS:
        raise SchemaError(f"unknown benchmark {name!r}; known: {', '.join(SCHEMAS)}")
    errors: list[str] = []
    _check(doc, SCHEMAS[name], "$", errors)
    if errors:
        raise SchemaError(f"{len(errors)} schema violation(s): " + "; ".join(errors[:20]))


# ----------------------------------------------------------------------------------------------
# Documents and files.


def document(benchmark: str, *, command: str, quick: bool, device: str, environment: dict, peaks: dict,
             settings: dict, rows: list, targets: list | None = None, notes: list | None = None) -> dict:
    return {"schema_version": SCHEMA_VERSION, "benchmark": benchmark,
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": command, "quick": quick, "device": device, "environment": environment, "peaks": peaks,
            "settings": settings, "rows": rows, "targets": targets or [], "notes": notes or []}


def _clean(value: Any) -> Any:
    """numpy scalars -> Python, NaN/inf -> None (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write(doc: dict, out_dir: Path) -> Path:
    """Validates ``doc`` and writes NAME.json; returns its path (``report.render`` writes NAME.md and plots)."""
    doc = _clean(doc)
    validate(doc)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = doc["benchmark"]
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def load(path: Path) -> dict:
    doc = json.loads(Path(path).read_text())
    validate(doc)
    return doc

