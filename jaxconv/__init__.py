"""jaxconv: training and sampling convolutional image models with JAX and Flax.

The names a Python user needs, loaded on first use (``import jaxconv`` imports neither JAX nor Flax,
so the command line starts quickly):

- ``preset(name)`` -> a model config; ``build_model(model_config)`` -> its Flax module (``init``/``apply``);
- ``load_experiment(name, smoke=False)`` -> an experiment's :class:`Config`; ``apply_overrides(config,
  ["section.key=value", ...])`` -> a changed, validated copy (what ``--set`` does);
- ``train_and_evaluate(config, workdir)`` -> trains (resuming from ``workdir``), returns the last metrics;
- ``restore(workdir, checkpoint="best")`` -> ``(config, step, state)``, ``state.params`` the parameters;
  ``evaluate(workdir, checkpoint="best", split="val")`` -> ``(step, metrics)``;
- ``model_of(config)`` -> a run's Flax module, as training built it;
- ``sample(model, params, key, (B, H, W, C), ...)`` -> images from a PixelCNN (``sample_cached``);
- ``Config``, and ``JaxconvError``, the base of every error a user can cause.

The modules behind them (``jaxconv.models``, ``jaxconv.config``, ``jaxconv.experiments``, ``jaxconv.train``,
``jaxconv.sampling``) hold the rest; no module of the package imports through these names.
"""

__version__ = "0.1.0"

# name -> (module, attribute): resolved by the module __getattr__ below on first use.
_EXPORTS = {
    "Config": ("jaxconv.config", "Config"),
    "apply_overrides": ("jaxconv.config", "apply_overrides"),
    "JaxconvError": ("jaxconv.errors", "JaxconvError"),
    "preset": ("jaxconv.models", "preset"),
    "build_model": ("jaxconv.models", "build_model"),
    "load_experiment": ("jaxconv.experiments", "load"),
    "train_and_evaluate": ("jaxconv.train.loop", "train"),
    "restore": ("jaxconv.train.loop", "restore_workdir"),
    "evaluate": ("jaxconv.train.loop", "evaluate_workdir"),
    "model_of": ("jaxconv.train.restore", "model_of"),
    "sample": ("jaxconv.sampling", "sample_cached"),
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jaxconv' has no attribute {name!r}")
    import importlib

    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
