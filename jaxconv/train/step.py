"""Pure train and eval steps: ``(state, batch) -> (state, metrics)`` and ``(params, batch) -> sums``.

The steps are engine-agnostic: under pmap they reduce over ``axis_name``; under jit
``axis_name`` is None and XLA derives the all-reduce from the shardings.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxconv import losses
from jaxconv.train.state import TrainState

# (model outputs, batch) -> per-batch metric sums incl. "loss" and "count"; see losses.py
SumsFn = Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]]
# (params, batch, rng, train) -> model outputs
ForwardFn = Callable[[Any, dict[str, jax.Array], jax.Array, bool], Any]


def make_train_step(forward: ForwardFn, sums_fn: SumsFn, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, *, skip_nonfinite: bool, axis_name: str | None = None):
    def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        if axis_name is not None:  # distinct dropout masks per device
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

        def loss_fn(params):
            sums = sums_fn(forward(params, batch, rng, True), batch)
            count = sums["count"]
            if axis_name is not None:
                count = jax.lax.psum(count, axis_name)
            # Dividing by the *global* count makes the psum of per-device gradients the global mean.
            return sums["loss"] / count, sums

        grads, sums = jax.grad(loss_fn, has_aux=True)(state.params)
        if axis_name is not None:
            grads = jax.lax.psum(grads, axis_name)
            sums = jax.lax.psum(sums, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = losses.means(sums)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["learning_rate"] = schedule(state.step)
        if skip_nonfinite:
            finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
            params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                             (params, opt_state), (state.params, state.opt_state))
            metrics["skipped"] = 1.0 - finite.astype(jnp.float32)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_eval_step(forward: ForwardFn, sums_fn: SumsFn, *, axis_name: str | None = None):
    def eval_step(params: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        sums = sums_fn(forward(params, batch, jax.random.key(0), False), batch)
        return sums if axis_name is None else jax.lax.psum(sums, axis_name)

    return eval_step
