"""The training loop and evaluation: config -> data -> jitted steps -> metrics -> checkpoints.

Host syncs happen only every ``train.log_every`` steps, before every save and at evaluation.
Because NaN/Inf are checked at every sync and every save is preceded by one, a non-finite state
is never saved: the last good checkpoint stays the latest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv import config as config_lib
from jaxconv import autotune, losses, stopping, tasks
from jaxconv.config import Config
from jaxconv.data.pipeline import Prefetcher, eval_batches, train_batches
from jaxconv.data.sources import Split, image_mean, load_split
from jaxconv.errors import NonFiniteError
from jaxconv.models import build_model
from jaxconv.models.conv_policy import ConvPolicy, load_table
from jaxconv.stopping import StopRequest
from jaxconv.train import progress as progress_lib
from jaxconv.train import restore as restore_lib
from jaxconv.train import workdir as workdir_lib
from jaxconv.train.checkpoint import Checkpoints
from jaxconv.train.metrics import MetricsWriter, read_metrics
from jaxconv.train.parallel import DataParallel, create_host_devices, maybe_initialize_distributed
from jaxconv.train.state import TrainState, init_state, make_optimizer
from jaxconv.train.step import make_eval_step, make_train_step


@dataclasses.dataclass
class Run:
    """Everything a config builds, shared by training and evaluation."""

    config: Config
    par: DataParallel
    train_data: Split
    val_data: Split
    tx: Any
    schedule: Any
    train_step: Any
    eval_step: Any
    init: Any  # () -> a fresh single-copy TrainState, replicated over the mesh
    spec: restore_lib.RunSpec | None = None  # what restoring needs of the data (written to run.json)
    mean: np.ndarray | None = None  # the train mean image [H, W, C] of data.subtract_mean runs
    conv_table: dict[str, str] = dataclasses.field(default_factory=dict)  # conv.autotune's winners


def build_run(config: Config, tuned: Path | None = None, log: Callable[[str], None] = lambda _: None) -> Run:
    """The run of a config (its data, task, optimizer and compiled steps); in a multi-process run the
    caller has started ``jax.distributed`` first (``train`` does). With ``conv.autotune``, the conv
    winners recorded in the file ``tuned`` if it exists, else the measured or cached ones
    (``jaxconv.autotune``); ``Run.conv_table`` holds them."""
    par = DataParallel(config.parallel, config.data.batch_size, config.data.eval_batch_size)
    train_data = load_split(config.data, "train")
    val_data = load_split(config.data, "val")
    mean = image_mean(train_data) if config.data.subtract_mean else None  # [H, W, C], pixel units
    spec = restore_lib.spec_of(config, train_data)
    policy, conv_table = _conv_policy(config, spec, config.data.batch_size // par.num_devices, tuned, log)
    task = tasks.task_for(build_model(config.model, jnp.dtype(config.train.dtype), policy), config, mean)
    task.validate(tasks.DataSpec(tuple(train_data.images.shape[1:]), train_data.num_classes, len(train_data)))
    forward, sums = task.forward, task.sums
    model = task.model
    tx, schedule = make_optimizer(config.optim, config.schedule, config.train.steps)
    step = make_train_step(forward, sums, tx, schedule, skip_nonfinite=config.train.nonfinite == "skip",
                           axis_name=par.axis_name)
    init = jax.jit(partial(init_state, model, tx, (1, *spec.input_shape), config.train.seed),
                   out_shardings=par.replicated)
    options = policy.compiler_options()
    return Run(config, par, train_data, val_data, tx, schedule,
               train_step=par.compile(step, donate=True, compiler_options=options),
               eval_step=par.compile(make_eval_step(forward, sums, axis_name=par.axis_name), donate=False,
                                     compiler_options=options),
               init=init, spec=spec, mean=mean, conv_table=conv_table)


def _conv_policy(config: Config, spec: restore_lib.RunSpec, batch: int, tuned: Path | None,
                 log: Callable[[str], None]) -> tuple[ConvPolicy, dict[str, str]]:
    policy = ConvPolicy.from_config(config.conv)
    if not config.conv.autotune:
        return policy, {}
    if tuned is not None and tuned.exists():
        table = dict(load_table(str(tuned)))
    else:
        table = autotune.tuned_table(autotune.layer_signatures(config.model, config.train.dtype, spec.input_shape,
                                                               batch), log, policy.compiler_options())
    return autotune.policy_with(policy, table), table


def evaluate(run: Run, params: Any, data: Split | None = None) -> dict[str, float]:
    """Mean metrics over every example of ``data`` (default: the validation split), each once.

    Batches hold ``data.eval_batch_size`` examples rounded up to a multiple of the device count;
    the last one is padded and its padding masked out of every sum.
    """
    data = run.val_data if data is None else data
    total = None
    for batch in eval_batches(data, run.par.eval_batch_size, jax.process_index(), jax.process_count()):
        sums = run.par.single_copy(run.par.settle(run.eval_step(params, run.par.put_batch(batch))))
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    total = jax.device_get(total)
    result = {k: float(v) for k, v in losses.means(total).items()}
    result["count"] = int(total["count"])
    return result


# ----------------------------------------------------------------------------------------------


def train(config: Config, workdir: Path, stop: StopRequest | None = None) -> dict[str, Any]:
    """Trains (resuming from ``workdir`` when it holds checkpoints); returns the last metrics.

    The result: ``step``, ``train`` and ``val`` (the last logged metrics), ``finished`` (a run that was
    already finished), ``wall_s`` (this call's seconds), ``workdir``, ``checkpoints`` (their directory),
    ``checkpoint_steps`` (the steps kept there), ``devices`` (how many of which backend, and the images
    each computes per step) and, when the run keeps a best checkpoint, ``best_step``,
    ``best_metric`` (its name) and ``best_value``.

    ``stop``: set by SIGINT/SIGTERM (``jaxconv.stopping``); when the caller passes none, Python signal
    handlers set one while the loop runs. A stopped run saves the step it reached and returns with
    ``terminated`` true and ``signal`` the signal's name.
    """
    began = time.perf_counter()
    workdir = Path(workdir)
    config_lib.validate(config)
    maybe_initialize_distributed(config.parallel)  # before anything (jax.process_index) starts a backend
    create_host_devices(config.parallel)
    lead = jax.process_index() == 0
    log = partial(print, file=sys.stderr, flush=True) if lead else (lambda *_: None)
    # The checks that need the data, before anything is written; conv.autotune reuses the winners a
    # previous start recorded.
    run = build_run(config, workdir / workdir_lib.CONV_TABLE, log)
    workdir_lib.create(workdir)
    with workdir_lib.locked(workdir) if lead else contextlib.nullcontext():
        previous = workdir_lib.previous_config(workdir)
        if previous is not None:
            workdir_lib.check_restart(previous, config, workdir)
        if lead and run.conv_table:
            workdir_lib.write_conv_table(run.conv_table, workdir)
        result = _train_locked(run, workdir, stop)
    return {**result, "devices": devices_text(run), "wall_s": time.perf_counter() - began}


def devices_text(run: Run) -> str:
    """How many devices of which backend, and the images each computes per step: "2 cpu (32 images each)"."""
    each = run.config.data.batch_size // run.par.num_devices
    return f"{run.par.num_devices} {jax.default_backend()} ({each} images each)"


def _train_locked(run: Run, workdir: Path, stop: StopRequest | None) -> dict[str, Any]:
    config = run.config
    lead = jax.process_index() == 0
    log = partial(print, file=sys.stderr, flush=True) if lead else (lambda *_: None)
    checkpoints = Checkpoints(workdir / "checkpoints", config.checkpoint)
    try:
        latest = checkpoints.newest_intact(workdir / "corrupt-checkpoints", log)
        if latest is not None and latest >= config.train.steps:
            log(f"{workdir}: already finished at step {latest}; nothing to train")
            return {**_finished_result(workdir, latest), **_where(checkpoints, workdir)}
        with MetricsWriter(workdir) as writer:
            state, start = _start_state(run, checkpoints, latest, workdir, writer, log)
            own = stop is None
            stop = StopRequest() if own else stop
            with stopping.python_handlers(stop) if own else contextlib.nullcontext(), stop.listening():
                result = _loop(run, run.par.place_state(state), start, checkpoints, writer, stop)
        checkpoints.wait()  # a failed background save is an error of this run
        result = {**result, **_where(checkpoints, workdir)}
    finally:
        try:
            checkpoints.manager.wait_until_finished()
        except Exception:  # already reported: either raised above or superseded by the error in flight
            pass
        checkpoints.close()
    return result


def _start_state(run: Run, checkpoints: Checkpoints, latest: int | None, workdir: Path, writer: MetricsWriter,
                 log) -> tuple[TrainState, int]:
    """A fresh state, or checkpoint ``latest``'s; the config and metrics records made to match it."""
    if latest is None:
        state, start = run.init(), 0
    else:
        # Only shapes, dtypes and shardings are needed to restore: a resume compiles no init.
        state, start = checkpoints.restore(latest, jax.eval_shape(run.init)), latest
        if jax.process_index() == 0:
            print(f"resuming from checkpoint {latest}", flush=True)
    if jax.process_index() == 0:
        workdir_lib.write_config(run.config, workdir)
        restore_lib.write_run_files(workdir, run.spec, run.mean)  # what restoring needs of the data
        if dropped := sum(record["step"] > start for record in read_metrics(workdir)):
            log(f"jaxconv: warning: {workdir / 'metrics.jsonl'} held {dropped} record(s) after step {start}, the "
                f"last complete checkpoint; dropped them (this run computes those steps again)")
    writer.resume_at(start)
    return state, start


def _where(checkpoints: Checkpoints, workdir: Path) -> dict[str, Any]:
    """The checkpoint directory and, when the run keeps a best checkpoint, its step and metric."""
    where: dict[str, Any] = {"workdir": str(workdir), "checkpoints": str(workdir / "checkpoints"),
                             "checkpoint_steps": checkpoints.all_steps()}
    if not checkpoints.config.keep_best or (best := checkpoints.best_step()) is None:
        return where
    name = checkpoints.config.best_metric
    value = (checkpoints.manager.metrics(best) or {}).get(name)
    if value is not None:
        where.update(best_step=best, best_metric=name, best_value=float(value))
    return where


def _finished_result(workdir: Path, step: int) -> dict[str, Any]:
    """What a finished run last logged at ``step``, as ``train`` returns it."""
    result: dict[str, Any] = {"step": step, "finished": True}
    for record in read_metrics(workdir):
        if record.get("step") == step and record.get("split") in ("train", "val"):
            result[record["split"]] = {k: v for k, v in record.items() if k not in ("step", "split")}
    return result


def _loop(run: Run, state: TrainState, start: int, checkpoints: Checkpoints, writer: MetricsWriter,
          stop: StopRequest) -> dict[str, Any]:
    cfg = run.config
    steps, pid, nproc = cfg.train.steps, jax.process_index(), jax.process_count()
    batches = Prefetcher(train_batches(run.train_data, cfg.data.batch_size, cfg.data.seed, start, pid, nproc),
                         run.par.put_batch, cfg.data.prefetch)
    # Process 0 only: a bar on a terminal, one line per log step in a file (progress.choose_form).
    form = progress_lib.choose_form(cfg.train.progress) if pid == 0 else "off"
    bar = progress_lib.Progress(total=steps, initial=start, form=form)
    with batches, contextlib.closing(bar):
        return _steps(run, state, start, checkpoints, writer, stop, batches, bar)


def _steps(run: Run, state: TrainState, start: int, checkpoints: Checkpoints, writer: MetricsWriter,
           stop: StopRequest, batches: Prefetcher, bar: progress_lib.Progress) -> dict[str, Any]:
    cfg = run.config
    steps, nproc = cfg.train.steps, jax.process_count()
    pending: list[dict[str, jax.Array]] = []
    last: dict[str, Any] = {"step": start}
    clock = time.perf_counter()
    # A signal: one process stops at the step that saw it. Processes of a multi-process run would
    # each see it at a different step and then wait forever in each other's collectives, so they
    # agree at every log step (an all-gather of the flags) and all stop there together.
    stopping_now = nproc == 1 and stop.is_set()  # a signal during compilation: nothing new to save
    for done in range(start + 1, steps + 1):
        if stopping_now:
            break
        state, metrics = run.train_step(state, next(batches))
        pending.append(run.par.settle(metrics))
        if len(pending) > 1:
            # One step queued behind the running one, no more: a signal (a preemption has a short
            # grace period) is then acted on within about two steps, not after log_every queued ones.
            jax.block_until_ready(pending[-2])
        bar.step()
        eval_due = done == steps or bool(cfg.train.eval_every and done % cfg.train.eval_every == 0)
        save_due = done == steps or bool(cfg.checkpoint.every and done % cfg.checkpoint.every == 0) or eval_due
        if nproc == 1:
            stopping_now = stop.is_set()
        if done % cfg.train.log_every and not save_due and not stopping_now:
            continue
        train_metrics = _flush(run, pending, done, cfg.train.nonfinite, checkpoints)
        elapsed, clock = time.perf_counter() - clock, time.perf_counter()
        train_metrics["images_per_sec"] = len(pending) * cfg.data.batch_size / elapsed
        writer.write(done, "train", train_metrics)
        bar.log(done, train_metrics["loss"], train_metrics["images_per_sec"])
        pending = []
        last = {"step": done, "train": train_metrics}
        val = None
        if eval_due:
            val = evaluate(run, state.params)
            writer.write(done, "val", val)
            last["val"] = val
            bar.write(f"step {done}: " + ", ".join(f"val {k} {v:.4f}" for k, v in val.items() if k != "count"))
        if nproc > 1:
            stopping_now = _any_process(stop.is_set())
        if save_due or stopping_now:
            checkpoints.save(done, run.par.single_copy(state), val, force=stopping_now)
        clock = time.perf_counter()
    if not stopping_now:
        return last
    # The step that saw the signal (or agreed on it) has flushed and saved above.
    step_now = int(jax.device_get(run.par.single_copy(state).step))
    if step_now > start and checkpoints.latest_step() != step_now:
        checkpoints.save(step_now, run.par.single_copy(state), force=True)
    name = stop.signal.name if stop.signal else "SIGTERM"
    bar.write(f"{name}: saved step {step_now}, exiting" if step_now > start else
              f"{name}: stopped before the first step (nothing new to save), exiting")
    return {**last, "terminated": True, "signal": name, "step": step_now}


def _any_process(flag: bool) -> bool:
    """True on every process when ``flag`` is true on any (call it on all processes at the same step)."""
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def _flush(run: Run, pending: list[dict[str, jax.Array]], done: int, nonfinite: str,
           checkpoints: Checkpoints) -> dict[str, float]:
    """Brings the pending steps' metrics to the host; stops on NaN/Inf; returns their means."""
    # single_copy per step, then stack: under pmap each step's metrics carry a device axis first
    stacked = jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *map(run.par.single_copy, pending)))
    first = done - len(pending) + 1
    finite = np.isfinite(stacked["loss"]) & np.isfinite(stacked["grad_norm"])  # [steps]
    if not finite.all():
        i = int(np.argmin(finite))
        name = "loss" if not np.isfinite(stacked["loss"][i]) else "grad_norm"
        if nonfinite == "stop":
            checkpoints.wait()
            raise NonFiniteError(f"non-finite {name} ({stacked[name][i]}) at step {first + i}; stopped; "
                                 f"last good checkpoint: step {checkpoints.latest_step()}")
        skipped = ", ".join(str(first + j) for j in np.flatnonzero(~finite))
        progress_lib.warn(f"jaxconv: warning: non-finite {name} ({stacked[name][i]}) at step {first + i}; "
                          f"skipped the update of step(s) {skipped}")
    return {k: float(np.mean(v)) for k, v in stacked.items()}


def restore_workdir(workdir: Path, checkpoint: str = "best") -> tuple[Config, int, TrainState]:
    """(config, step, train state) of a run's best/latest/numbered checkpoint, on this host's first device.

    Reads the work directory alone (config.json, run.json, the checkpoint): no data split is opened,
    nothing is compiled; see :mod:`jaxconv.train.restore`."""
    return restore_lib.restore_workdir(workdir, checkpoint)


def evaluate_workdir(workdir: Path, checkpoint: str = "best", split: str = "val") -> tuple[int, dict[str, float]]:
    """Restores a run's best/latest/numbered checkpoint and evaluates it on ``split``.

    Opens only that split; a data.subtract_mean run centres its inputs with the train mean image
    recorded in the work directory (``train_mean.npy``), so evaluating on val needs no train split."""
    workdir = Path(workdir)
    config = restore_lib.load_config(workdir)
    maybe_initialize_distributed(config.parallel)
    par = DataParallel(config.parallel, config.data.batch_size, config.data.eval_batch_size)
    spec = restore_lib.run_spec(workdir, config)
    step, state = restore_lib.restore_state(workdir, config, spec, checkpoint, par.replicated)
    data = load_split(config.data, split)
    restore_lib.check_data(spec, data, f"{config.data.source}:{split}")
    mean = restore_lib.train_mean(workdir, config) if config.data.subtract_mean else None  # [H, W, C]
    model = restore_lib.model_of(config)
    task = tasks.task_for(model, config, mean)
    forward, sums = task.forward, task.sums
    # Evaluation needs only these parts of a Run: no train split, optimizer or train step.
    run = Run(config, par, train_data=None, val_data=data, tx=None, schedule=None, train_step=None,
              eval_step=par.compile(make_eval_step(forward, sums, axis_name=par.axis_name), donate=False,
                                    compiler_options=model.policy.compiler_options()), init=None)
    return step, evaluate(run, par.place_state(state).params, data)
