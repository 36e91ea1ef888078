"""The trainer. One loop, read top to bottom:

setup -> mesh -> input pipeline -> model, optimizer, method -> shard state -> jitted step -> restore checkpoint
-> evaluators -> loop (step, log, eval, checkpoint, preemption check) -> final eval + report.

Methods plug in through `ssl_jax.methods` (found by `config.method`); everything a user may want to change is
in the config.
"""
import dataclasses
import functools
import json
import os
import pathlib
import signal
from typing import Any, Callable

from absl import logging
from flax import nnx, struct
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax import (checkpoint, config_schema, data, methods, models, non_finite, optim, paths, progress,
                     report, sharding, stages)
from ssl_jax.errors import Preempted, UserError
from ssl_jax.evaluate import frozen, online_probe
from ssl_jax.methods.common import CollapseMonitor
from ssl_jax.metrics import MetricWriter
from ssl_jax.workdir_lock import WorkdirLock


@struct.dataclass
class TrainState:
  """Everything a step reads and writes; donated to the step and saved whole in checkpoints."""
  step: jax.Array          # int32 scalar
  params: Any              # nnx.State of nnx.Param
  batch_stats: Any         # nnx.State of nnx.BatchStat
  opt_state: Any
  extra: Any               # method state: EMA target, queue, ... ({} for SimCLR)
  probe: Any               # online linear probe: {'params', 'opt_state'}, or {} when off
  rng: jax.Array           # raw key data; each step uses fold_in(rng, step)


# ----------------------------------------------------------------------------------------------- setup helpers
def check_run(config, mesh) -> None:
  """The one check of a config across its fields and against the mesh (config_schema.validate, which runs
  first, has checked each field alone): the trainer's rules, the stages', the encoder's and the method's with
  its add-ons'. They need no data and no model, so bad values fail before anything is computed or written."""
  sharding.check_batch_size(config.batch_size, mesh)
  stages.check(config)
  if config.data.subset_num and config.data.subset_per_class:
    raise UserError(f'data.subset_num={config.data.subset_num} and data.subset_per_class='
                    f'{config.data.subset_per_class}: set at most one of them (0 = the whole split)')
  if not config.stages and config.total_steps == 0 and config.total_epochs <= 0:
    raise UserError('the run has no steps: set --config.total_steps or --config.total_epochs to a positive '
                    'value')
  methods.check_config(config)
  models.check_config(config, stages.image_sizes(config))


class _Preemption:
  """SIGTERM/SIGINT -> stop at a step boundary, the same one on every process.

  One process: a Python handler raises a flag that the loop reads after each step. Several processes
  (jax.distributed): a signal reaches them at different steps, so none may stop on its own flag; jax's
  preemption service catches SIGTERM and agrees on the first step that every process can still reach
  (multihost_utils.reached_preemption_sync_point, asked after every step). SIGINT is passed on to it as SIGTERM.
  """

  def __init__(self):
    self._raised = False
    self._agreed = jax.process_count() > 1
    signals = (signal.SIGINT,) if self._agreed else (signal.SIGTERM, signal.SIGINT)
    handler = self._forward_to_service if self._agreed else self._raise
    self._previous = {s: signal.signal(s, handler) for s in signals}

  def _raise(self, signum, frame):
    self._raised = True

  def _forward_to_service(self, signum, frame):
    os.kill(os.getpid(), signal.SIGTERM)

  def reached(self, step: int) -> bool:
    """Whether to save and stop after `step`; asked once after every step, in order."""
    if self._agreed:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._raised

  def restore(self):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


# ----------------------------------------------------------------------------------------------- the step
def make_train_step(graphdef, tx, schedule, method, config, resolution: int, total_steps: int, probe_tx,
                    state_sharding, mesh, steps_per_epoch: int = 0):
  """The jitted update for one view resolution (with multi-crop, one set of resolutions: the local crops'
  size is fixed by the config): views, loss, gradients, optimizer, method state, probe."""

  def train_step(state: TrainState, batch: dict):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    ctx = methods.StepContext(config=config, resolution=resolution, step=state.step, total_steps=total_steps,
                              extra=state.extra, steps_per_epoch=steps_per_epoch)
    views = method.make_views(key, batch, ctx)

    def loss_of(params):
      # Rebuilt inside this trace: NNX lets a module update only the BatchStats created at its trace level.
      batch_stats = jax.tree.map(lambda x: x, state.batch_stats)
      model = nnx.merge(graphdef, params, batch_stats)
      loss, (metrics, extra, features) = method.loss_fn(model, views, batch, key, ctx)
      return loss, (metrics, extra, features, nnx.state(model, nnx.BatchStat))

    params = method.prepare_params(state.params, config)
    (loss, (metrics, extra, features, batch_stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    probe = state.probe
    if probe_tx is not None:
      probe, probe_metrics = online_probe.update(probe, probe_tx, features, batch['label'])
      metrics = {**metrics, **probe_metrics}
    updates, opt_state = tx.update(grads, state.opt_state, params)
    params = optax.apply_updates(params, updates)
    extra = method.after_update(extra, params, dataclasses.replace(ctx, extra=extra))
    metrics = {**metrics, 'loss': loss, 'lr': schedule(state.step),
               'grad_norm': optax.tree.norm(grads), 'param_norm': optax.tree.norm(params)}
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state, extra=extra, probe=probe)
    if config.on_nan == 'skip_step':
      new_state, metrics = non_finite.skip_if_non_finite(state, new_state, metrics)
    return new_state, metrics

  return jax.jit(train_step, donate_argnums=0, out_shardings=(state_sharding, sharding.replicated(mesh)))


@dataclasses.dataclass(frozen=True)
class Setup:
  """What a run's steps are built from (`setup`)."""
  graphdef: Any                    # the model's structure (nnx.GraphDef), for the evaluators
  state: TrainState                # the initial state, on the mesh
  step_for: Callable[[int], Any]   # view resolution -> the jitted train step (built on its first call)


def setup(config, mesh, method, run_plan: stages.Plan, *, steps_per_epoch: int, in_channels: int,
          num_classes: int) -> Setup:
  """The run's model, optimizer, method state and online probe, the state on the mesh, and its steps.

  The trainer's own setup, shared with `python -m ssl_jax.benchmark`: the benchmarked step is the trained one.

  Args:
    config: the run's checked ConfigDict (`config_schema.validate`, `check_run`).
    mesh: the device mesh (`sharding.make_mesh`).
    method: `methods.get_method(config)`.
    run_plan: the run's stages (`stages.plan`).
    steps_per_epoch: full global batches per epoch of the training split.
    in_channels: channels of the training images.
    num_classes: classes of the training split; the online probe runs when config.probe.enabled and there
      are labels (more than one class).

  Returns:
    The Setup.
  """
  total_steps = run_plan.total_steps
  progress.note(f'building the model: {config.method}, {config.model.name}, {total_steps} steps')
  build = lambda: method.build_model(config, in_channels=in_channels, rngs=nnx.Rngs(config.seed))
  graphdef = nnx.split(nnx.eval_shape(build), nnx.Param, nnx.BatchStat)[0]
  # One optimizer (and learning-rate schedule) per segment of stages that restart it (ssl_jax/stages.py).
  tx, schedule = optim.create_staged_optimizer(run_plan.optimizer_segments(), batch_size=config.batch_size,
                                               steps_per_epoch=steps_per_epoch)
  probe_tx = None
  if config.probe.enabled and num_classes > 1:  # on whenever the training data have labels
    probe_tx = online_probe.optimizer(config.probe, total_steps=total_steps)

  def init() -> TrainState:
    model = build()
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    probe = {} if probe_tx is None else online_probe.init(model.encoder.out_dim, num_classes, probe_tx)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), extra=method.init_extra(model, config), probe=probe,
                      rng=jax.random.key_data(jax.random.key(config.seed)))

  # The whole state in one compiled program (models.build_compiled says why), replicated on the mesh: only
  # batches are split over `data`.
  state = jax.jit(init, out_shardings=sharding.replicated(mesh))()
  state_sharding = jax.tree.map(lambda x: x.sharding, state)

  # Jitted step: one per view resolution (multi-resolution runs reuse them).
  steps = {}

  def step_for(resolution):
    if resolution not in steps:  # compiled on its first call: a stage switch pauses the run for it
      stage = f' for the stage at {resolution} px' if steps else f' ({resolution} px)'
      progress.note(f'compiling the training step{stage}; the first step waits for it')
      steps[resolution] = make_train_step(graphdef, tx, schedule, method, config, resolution, total_steps,
                                          probe_tx, state_sharding, mesh, steps_per_epoch)
    return steps[resolution]

  return Setup(graphdef, state, step_for)


def _log(pending: list, writer: MetricWriter, image_size: int, data_metrics: dict,
         collapse: CollapseMonitor) -> None:
  """Writes the mean of the buffered metrics (lr and image size of the last step) and empties the buffer.

  Steps skipped for a non-finite loss (on_nan='skip_step') are counted, not averaged. `collapse` warns (once)
  when the means say the projections have collapsed.
  """
  fetched = [m for _, m in pending]
  kept = [m for m in fetched if not m.get('nan_skipped') and np.isfinite(m['loss'])] or fetched
  mean = {k: float(np.mean([m[k] for m in kept])) for k in kept[-1] if k != 'nan_skipped'}
  if 'nan_skipped' in fetched[-1]:
    mean['nan_skipped_steps'] = float(sum(m['nan_skipped'] for m in fetched))
  mean.update(lr=float(fetched[-1]['lr']), image_size=image_size, **data_metrics)
  writer.write(pending[-1][0], mean)
  warning = collapse.update(mean)
  if warning:
    logging.warning('Step %d: %s', pending[-1][0], warning)
  pending.clear()


def _loop(config, state, step_for, resolution_at, batches, mesh, ckpt, writer, evaluator, total_steps,
          data_metrics):
  """Steps from `state.step` to `total_steps`: log, evaluate, checkpoint, stop cleanly on SIGTERM/SIGINT.

  A non-finite loss is handled by `config.on_nan` (ssl_jax/non_finite.py) whenever metrics are fetched.
  """
  guard = non_finite.Guard(config, ckpt, writer, launch_steps=total_steps - int(state.step))
  guard.prepare(state)
  preemption = _Preemption()
  pending = []
  collapse = CollapseMonitor(config.model.head.out_dim)
  try:
    for step in range(int(state.step), total_steps):
      batch = sharding.global_batch(next(batches), mesh)
      state, metrics = step_for(resolution_at(step))(state, batch)
      done = step + 1
      pending.append((done, metrics))
      stopping = preemption.reached(done)  # asked after every step: the processes' agreement needs each
      saving = done % config.checkpoint_every_steps == 0 or done == total_steps or stopping
      logging_now = done % config.log_every_steps == 0 or done == total_steps
      if saving or logging_now:
        rolled_back = guard.check(pending, state)  # stops before a bad state can be checkpointed
        if rolled_back is not None:  # the checkpoint's state, moved on to this step; nothing to log
          state, logging_now = rolled_back, False
      if logging_now:
        _log(pending, writer, image_size=resolution_at(step), data_metrics=data_metrics, collapse=collapse)
      if config.eval_every_steps and done % config.eval_every_steps == 0 and done < total_steps:
        writer.write(done, evaluator.knn(state.params, state.batch_stats), console=False)
      if saving:
        ckpt.save(done, state, config)
      if stopping and done < total_steps:
        raise Preempted(f'stopped by a signal after step {done}; the checkpoint is saved: run the same command '
                        'to resume')
  finally:
    preemption.restore()
  return state


# ----------------------------------------------------------------------------------------------- the run
def train_and_evaluate(config, workdir, *, devices=None) -> dict:
  """Pretrains `config.method` in `workdir` (resuming from its newest checkpoint) and evaluates the encoder.

  Args:
    config: the run's ConfigDict (see configs/).
    workdir: where checkpoints, metrics.jsonl, TensorBoard files and results.json go.
    devices: the devices of the mesh; all devices of all processes by default.

  Returns:
    The final results (also written to `<workdir>/results.json`).

  Raises:
    UserError: bad input (config, data, an incompatible checkpoint, a workdir another run holds, a full disk).
    NonFiniteLoss: the loss became NaN/Inf and `config.on_nan` says to stop.
    Preempted: SIGTERM/SIGINT arrived; a checkpoint was saved.
  """
  # Setup: every check that can fail on bad input runs before any compute or write.
  config_schema.validate(config)  # before jax.distributed starts: a bad value must not hold up the others
  workdir = paths.check_workdir(workdir)  # a file, or read-only: one line, before anything is written
  jax.config.update('jax_threefry_partitionable', True)  # random bits independent of the sharding
  sharding.maybe_initialize_distributed(config.distributed)
  progress.enabled = jax.process_index() == 0
  mesh = sharding.make_mesh(devices)
  check_run(config, mesh)
  method = methods.get_method(config)
  # One live run per workdir (released however the run ends); taken before the checkpointer cleans up.
  with WorkdirLock(workdir, enabled=jax.process_index() == 0):
    return _train_in_workdir(config, workdir, mesh, method)


def _train_in_workdir(config, workdir: pathlib.Path, mesh, method) -> dict:
  """The rest of `train_and_evaluate`, in the locked workdir: restore, train, evaluate."""
  ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
  ckpt.check_compatible(config)
  done = ckpt.finished(config, workdir / 'results.json')
  if done is not None:  # launched again: nothing to train or evaluate
    ckpt.close()
    logging.warning('This run is already done (step %d): its results are in %s; nothing is recomputed (raise '
                    '--config.total_steps to train on, or delete results.json to evaluate again)',
                    done['steps'], (workdir / 'results.json').absolute())
    return done

  # Input pipeline.
  # One source per view resolution: variable-size data are cropped on the host at each stage's size.
  source_for = functools.cache(lambda size: data.get_source(
      config.data, split=config.data.train_split, train=True, crops=method.host_crops(config),
      image_size=size))
  progress.note(f'reading the data: {config.data.name} {config.data.train_split!r}')
  train_source = source_for(stages.image_sizes(config)[0])
  steps_per_epoch = train_source.steps_per_epoch(config.batch_size)
  run_plan = stages.plan(config, steps_per_epoch)
  total_steps, resolution_at = run_plan.total_steps, run_plan.image_size_at
  in_channels = train_source.image_shape[-1] if train_source.image_shape else 3
  methods.check_labels(method, config, train_source.num_classes)

  # Model, optimizer, method; the state sharded onto the mesh; the jitted step per view resolution.
  run = setup(config, mesh, method, run_plan, steps_per_epoch=steps_per_epoch, in_channels=in_channels,
              num_classes=train_source.num_classes)
  state, step_for = run.state, run.step_for

  # Restore.
  restored = ckpt.restore(state)  # the newest usable checkpoint; broken ones are moved aside with a warning
  state = restored if restored is not None else state
  start_step = int(state.step)
  if start_step:
    logging.warning('Resuming from the checkpoint of step %d in %s', start_step, ckpt.directory)

  # Evaluators: the frozen encoder scored by kNN during training, by kNN and a linear probe at the end.
  evaluator = None
  if config.eval_every_steps or config.eval.final:
    progress.note(f'opening the evaluation splits: {config.data.train_split!r} (kNN bank) and '
                  f'{config.data.eval_split!r}')
    evaluator = frozen.FrozenEncoderEval(config, method, run.graphdef, mesh, in_channels=in_channels)

  # Loop.
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'config.json').write_text(config.to_json(indent=2))
  writer = MetricWriter(workdir, total_steps=total_steps, batch_size=config.batch_size, start_step=start_step)
  batches = stages.stage_batches(run_plan, source_for, start_step=start_step,
                                 global_batch_size=config.batch_size, seed=config.seed,
                                 process_index=jax.process_index(), process_count=jax.process_count(),
                                 partners=method.needs_partners(config))
  # Images the source could not decode and left out (image_folder), reported with every log record.
  skipped = getattr(train_source, 'skipped_images', None)
  data_metrics = {} if skipped is None else {'data/skipped_images': float(skipped)}
  ckpt.start_clock()  # training time, summed over launches with the checkpoints
  try:
    state = _loop(config, state, step_for, resolution_at, batches, mesh, ckpt, writer, evaluator, total_steps,
                  data_metrics)
  finally:
    # Stops the input pipeline's prefetching now, not whenever the generator is collected (a traceback of a
    # preemption would keep it alive).
    batches.close()
    ckpt.close()
    writer.close()
  train_time = ckpt.train_time_s()

  # Final evaluation and report.
  results = {'steps': total_steps, 'train_time_s': round(train_time, 1)}
  if config.eval.final:
    results.update(evaluator.final(state.params, state.batch_stats))
  if jax.process_index() == 0:
    (workdir / 'results.json').write_text(json.dumps(results, indent=2))
    report.plot_metrics(workdir)
  return results
