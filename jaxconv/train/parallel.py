"""Data parallelism: one mesh axis, ``batch``, over every device of every process.

Two engines share this interface:
- ``jit`` (default): the train state is replicated with ``NamedSharding(mesh, P())``, batches
  are sharded with ``P('batch')``; XLA inserts the gradient all-reduce.
- ``pmap``: ``jax.pmap`` with ``lax.pmean`` over the same axis name; the state carries a leading
  device axis. (Since JAX 0.8 pmap is itself jit(shard_map), so both engines run the same
  collectives; pmap stays because users ask for it.)
Checkpoints always hold the single-copy (unreplicated) state, so either engine on any device
count can restore them.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxconv.config import ParallelConfig
from jaxconv.errors import ConfigError

AXIS = "batch"

_CLUSTER_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "JAX_COORDINATOR_ADDRESS")


def maybe_initialize_distributed(config: ParallelConfig) -> None:
    """Calls ``jax.distributed.initialize`` when the run has (or a cluster says it has) several processes."""
    if config.distributed == "off" or jax.distributed.is_initialized():  # initialize() twice is an error
        return
    explicit = config.num_processes > 1
    if not explicit and not any(os.environ.get(k) for k in _CLUSTER_ENV):
        return
    # Nothing here may touch a backend (jax.default_backend(), jax.devices(), ...): initialize()
    # refuses to run after one exists. Gloo gives CPU devices cross-process collectives; the flag
    # only concerns the CPU client, so it is harmless on GPU/TPU hosts. A user's choice (mpi) wins.
    if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs: dict[str, Any] = {}
    if config.coordinator_address:
        kwargs["coordinator_address"] = config.coordinator_address
    if config.num_processes:
        kwargs["num_processes"] = config.num_processes
    if config.process_id >= 0:
        kwargs["process_id"] = config.process_id
    try:
        jax.distributed.initialize(**kwargs)
    except ValueError as e:  # JAX found a cluster variable but not the rest of what it needs
        found = ", ".join(k for k in _CLUSTER_ENV if os.environ.get(k))
        raise ConfigError(f"cannot start a multi-process run ({found or 'parallel.num_processes'} set): {e}; set "
                          f"parallel.coordinator_address, parallel.num_processes and parallel.process_id, or "
                          f"parallel.distributed=off for one process") from None


def request_host_devices(count: int) -> bool:
    """Asks JAX for ``count`` CPU devices (``jax_num_cpu_devices``) unless the user chose a count (that
    option or XLA's ``--xla_force_host_platform_device_count``) or JAX's backends have started (then the
    count is fixed); whether the request was made."""
    if "--xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "") or \
            jax.config.jax_num_cpu_devices >= 0:
        return False
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # the backends have started: JAX refuses a new count
        return False
    return True


def create_host_devices(config: ParallelConfig) -> None:
    """Before JAX's backends start: ``host_device_count(parallel.cpu_devices)`` CPU devices, each batch
    split over them. Only the CPU client is affected; on a GPU host the accelerator stays the default
    backend."""
    request_host_devices(host_device_count(config.cpu_devices))


def host_device_count(cpu_devices: int) -> int:
    """``cpu_devices``, or one device when 0.

    Why one: one device's convs (XLA's Eigen kernels) and matmuls (YNNPACK) use every core. More devices
    overlap their small ops but cut every op in pieces: on the 2-core EPYC (``jaxconv bench train --devices
    1,2``, docs/benchmarks.md) two devices trained at 0.59x (both LeNets at batch 64) to 0.94x (Gated
    PixelCNN MNIST) the speed of one."""
    return cpu_devices or 1


class DataParallel:
    """Places batches and states on the devices for one engine (``jit`` or ``pmap``)."""

    def __init__(self, config: ParallelConfig, global_batch: int, eval_batch: int):
        self.mode = config.mode
        local = jax.local_devices()
        if config.num_devices:
            if jax.process_count() > 1:
                raise ConfigError("parallel.num_devices must be 0 (all) in a multi-process run")
            if config.num_devices > len(local):
                raise ConfigError(f"parallel.num_devices={config.num_devices} but only {len(local)} devices exist")
            local = local[:config.num_devices]
        devices = local if jax.process_count() == 1 else jax.devices()
        self.num_devices = len(devices)
        self.num_local_devices = len(local)
        if global_batch % self.num_devices:
            raise ConfigError(f"data.batch_size={global_batch} does not divide over {self.num_devices} devices; "
                              f"use a multiple of {self.num_devices}")
        # Evaluation masks its padding anyway, so any eval batch works: round it up to the devices.
        self.eval_batch_size = -(-eval_batch // self.num_devices) * self.num_devices
        self.mesh = Mesh(np.array(devices), (AXIS,))
        self.replicated = NamedSharding(self.mesh, P())
        self.sharded = NamedSharding(self.mesh, P(AXIS))
        self.local_mesh = Mesh(np.array(local), (AXIS,))
        # XLA:CPU can deadlock when several multi-device programs with collectives are in flight
        # at once (their rendezvous threads starve each other on a small host thread pool), so on
        # CPU we keep one step in flight. Accelerators keep fully asynchronous dispatch.
        self.one_in_flight = jax.default_backend() == "cpu" and self.num_devices > 1

    # -- batches ---------------------------------------------------------------------------------
    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This host's slice -> a device array (global for jit, [local_devices, ...] for pmap)."""
        if self.mode == "pmap":
            shard = NamedSharding(self.local_mesh, P(AXIS))
            return {k: jax.device_put(v.reshape(self.num_local_devices, -1, *v.shape[1:]), shard)
                    for k, v in batch.items()}
        return {k: jax.make_array_from_process_local_data(self.sharded, v) for k, v in batch.items()}

    def settle(self, outputs: Any) -> Any:
        """Waits for ``outputs`` only where dispatch must stay serial (see ``one_in_flight``)."""
        return jax.block_until_ready(outputs) if self.one_in_flight else outputs

    # -- states ----------------------------------------------------------------------------------
    def place_state(self, state: Any) -> Any:
        """A single-copy state -> the engine's layout."""
        state = jax.device_put(state, self.replicated)
        if self.mode == "pmap":
            # pmap takes host-local inputs ([local devices, ...]) even in a multi-process run, so
            # each host copies its own replica (addressable_data(0)) rather than the global array.
            shard = NamedSharding(self.local_mesh, P(AXIS))
            n = self.num_local_devices
            state = jax.tree.map(
                lambda x: jax.device_put(jnp.broadcast_to(x.addressable_data(0), (n, *x.shape)), shard), state)
        return state

    def single_copy(self, state: Any) -> Any:
        """The engine's layout -> a single-copy state (what checkpoints hold).

        Under pmap in a multi-process run the copy is a global array replicated over every host
        (made from each host's own device copies), so that orbax and jitted code can use it.
        """
        if self.mode != "pmap":
            return state
        if jax.process_count() == 1:
            return jax.tree.map(lambda x: x[0], state)
        return jax.tree.map(lambda x: jax.make_array_from_single_device_arrays(
            x.shape[1:], self.replicated, [s.data[0] for s in x.addressable_shards]), state)

    def compile(self, fn, *, donate: bool, compiler_options: dict[str, str] | None = None):
        """jit or pmap ``fn(state_or_params, batch) -> outputs``; outputs come back replicated.

        ``fn`` must reduce over ``AXIS`` itself under pmap (see ``axis_name``). ``compiler_options``:
        XLA's, for this program (the conv policy's, ``ConvPolicy.compiler_options``).
        """
        donate_argnums = (0,) if donate else ()
        if self.mode == "pmap":
            mapped = jax.pmap(fn, axis_name=AXIS, donate_argnums=donate_argnums)
            return _CompiledWith(mapped, compiler_options) if compiler_options else mapped
        return _UnderMesh(jax.jit(fn, in_shardings=(self.replicated, self.sharded), out_shardings=self.replicated,
                                  donate_argnums=donate_argnums, compiler_options=compiler_options), self.mesh)

    @property
    def axis_name(self) -> str | None:
        return AXIS if self.mode == "pmap" else None


class _UnderMesh:
    """A jitted function traced and run with its mesh in context (``jax.set_mesh``), so that code inside
    can split work over the mesh itself (the native kernel gradient, ``jaxconv.models.cpu_conv_grads``)."""

    def __init__(self, jitted, mesh: Mesh):
        self.jitted, self.mesh = jitted, mesh

    def __call__(self, *args):
        with jax.set_mesh(self.mesh):
            return self.jitted(*args)

    def lower(self, *args):
        with jax.set_mesh(self.mesh):
            return self.jitted.lower(*args)


class _CompiledWith:
    """A pmapped function compiled with XLA options, once per input shapes (``jax.pmap`` takes no
    ``compiler_options``; its lowering's ``compile`` does)."""

    def __init__(self, mapped, options: dict[str, str]):
        self.mapped, self.options, self.compiled = mapped, options, {}

    def __call__(self, *args):
        leaves, tree = jax.tree.flatten(args)
        key = (tree, tuple(jax.typeof(x) for x in leaves))  # shapes, dtypes and weak types
        if key not in self.compiled:
            self.compiled[key] = self.mapped.lower(*args).compile(compiler_options=self.options)
        return self.compiled[key](*args)
