"""The device mesh, batch sharding and multi-process start-up.

One mesh with a single `data` axis over every device of every process. The global batch is split along it;
parameters, optimizer state and everything else in the train state are replicated. There is no per-device code
in the trainer: plain `jax.jit` over global arrays, with XLA inserting the collectives.
"""
import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ssl_jax.errors import UserError

DATA_AXIS = 'data'


def _int_from_env(name: str) -> int | None:
  text = os.environ.get(name)
  if not text:
    return None
  try:
    return int(text)
  except ValueError:
    raise UserError(f'{name}={text!r} is not an integer; set it to a whole number '
                    '(launch/gpu.sh sets it from --num_processes / --process_id)') from None


def maybe_initialize_distributed(requested: bool) -> None:
  """Starts `jax.distributed` when the config or `SSL_JAX_DISTRIBUTED=1` asks for it (once per process).

  On TPU pods, Slurm and Open MPI, `initialize()` finds the coordinator and the process ids itself. Elsewhere
  (bare GPU hosts, CPU processes on one machine) set JAX_COORDINATOR_ADDRESS (host:port of process 0),
  JAX_NUM_PROCESSES and JAX_PROCESS_ID, as launch/gpu.sh does: jax reads only the first of these itself, so
  the other two are read here and passed on.

  Args:
    requested: `config.distributed`.
  """
  if not (requested or os.environ.get('SSL_JAX_DISTRIBUTED') == '1') or jax.distributed.is_initialized():
    return
  num_processes, process_id = _int_from_env('JAX_NUM_PROCESSES'), _int_from_env('JAX_PROCESS_ID')
  if (num_processes is None) != (process_id is None):
    raise UserError('set both JAX_NUM_PROCESSES and JAX_PROCESS_ID, or neither (then the cluster is '
                    'detected: TPU, Slurm, Open MPI)')
  if process_id is not None and not 0 <= process_id < num_processes:
    raise UserError(f'JAX_PROCESS_ID={process_id} is not in 0..{num_processes - 1}; number the processes '
                    'from 0 to JAX_NUM_PROCESSES - 1')
  jax.distributed.initialize(num_processes=num_processes, process_id=process_id)


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh named `data` over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  # Auto axes: the step is written as global-array code and GSPMD propagates shardings through it.
  return jax.sharding.Mesh(np.array(devices), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`, every other axis whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh, *, what: str = 'batch_size') -> None:
  """Fails early when the global batch cannot be split evenly over the devices and processes."""
  devices, processes = mesh.size, jax.process_count()
  if batch_size <= 0 or batch_size % devices or batch_size % processes:
    suggestion = max(devices, batch_size // devices * devices)
    raise UserError(f'{what}={batch_size} is not divisible by the {devices} devices; '
                    f'use a multiple of {devices}, e.g. --config.{what}={suggestion}')


def global_batch(local_batch: dict, mesh) -> dict:
  """Assembles each process's numpy batch into global arrays sharded over `data`."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
