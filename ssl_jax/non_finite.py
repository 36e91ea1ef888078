"""What the trainer does when training diverges (NaN or Inf): `config.on_nan`.

A step is non-finite when its loss, gradient norm or parameter norm is (a norm overflows to Inf long before
the parameters do: 1e30 weights are finite, and NaN one step later). Independently, the whole train state
that is about to be logged or saved (parameters, batch statistics, optimizer state, method state, online
probe) is checked by one fused reduction on the device (`finite_parts`): a NaN in a BatchNorm statistic or
a momentum buffer never reaches the loss of that step, but it would poison the checkpoint and the encoder.

  stop       (default) stop with exit code 1, naming the step; the last good checkpoint is kept.
  skip_step  the step's update is dropped on the device: parameters, batch statistics, optimizer and method
             state and the online probe stay as they were when the loss, the gradient norm, the parameter
             norm or anything in the new state is not finite (`skip_if_non_finite`, inside the jitted step:
             no host sync per step). The step still counts: the next step takes the next batch. Each log
             record counts the skipped steps of its interval (`nan_skipped_steps`) and averages the others
             only. Skipping cannot help a state whose every update diverges: after `nan_max_skipped_steps`
             skipped steps in a row (or when every step of a launch shorter than that was skipped) it stops
             as `stop` does.
  rollback   back to the newest checkpoint, then on with the next batch: the state of that checkpoint
             continues at the current step, as if the steps since the checkpoint had been skipped (their
             batches are not seen again, and the optimizers' own step counts, which drive the learning-rate
             schedules, move on with the step). At most `nan_max_rollbacks` times per launch, then stop.
             A run starting without any checkpoint saves its initial state first, to have one.

Everything is judged when the step metrics come to the host: at every log step and before every checkpoint,
so no checkpoint ever holds a non-finite state, under any policy, and a run never ends with exit code 0 and a
non-finite encoder. A stop (exit code 1) prints how to resume from the last good checkpoint with a lower
learning rate; that resume is accepted without `resume_from_different_config` (ssl_jax/checkpoint.py,
AFTER_NON_FINITE_STOP). Every event is a record in metrics.jsonl ({'step', 'time', 'event', 'message'}) and
a console line.
"""
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.errors import NonFiniteLoss

# The parts of the train state a checkpoint holds that can turn non-finite (step and RNG key are integers).
STATE_PARTS = ('params', 'batch_stats', 'opt_state', 'extra', 'probe')
_STEP_NORMS = (('loss', 'the loss'), ('grad_norm', 'the gradient norm'), ('param_norm', 'the parameter norm'))


def _all_finite(tree) -> jax.Array:
  checks = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.stack(checks).all() if checks else jnp.array(True)


@jax.jit
def finite_parts(state) -> dict:
  """{part: whether every float in it is finite} for each of STATE_PARTS: one fused reduction on device."""
  return {part: _all_finite(getattr(state, part)) for part in STATE_PARTS}


def non_finite_parts(state) -> list[str]:
  """The names of the parts of `state` (a TrainState) that hold a NaN or Inf; [] when it is finite."""
  return [part for part, ok in jax.device_get(finite_parts(state)).items() if not ok]


def skip_if_non_finite(old, new, metrics: dict):
  """`new` where the step was finite, else `old` with the step count advanced; adds 'nan_skipped' (0 or 1).

  Args:
    old: the train state before the step.
    new: the train state after it.
    metrics: the step's metrics, with scalar 'loss', 'grad_norm' and 'param_norm'.

  Returns:
    (state, metrics).
  """
  finite = jnp.stack([jnp.isfinite(metrics[k]) for k, _ in _STEP_NORMS]).all()
  finite &= jnp.stack([_all_finite(getattr(new, part)) for part in STATE_PARTS]).all()
  kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  return kept.replace(step=new.step), {**metrics, 'nan_skipped': 1.0 - finite.astype(jnp.float32)}


def _step_problem(step: int, m: dict) -> str | None:
  """What was not finite in one step's metrics, or None."""
  return next((f'{name} became {float(m[k])}' for k, name in _STEP_NORMS if not np.isfinite(m[k])), None)


class Guard:
  """Applies `config.on_nan` to the step metrics and the train state the loop brings to the host."""

  def __init__(self, config, ckpt, writer, *, launch_steps: int):
    """
    Args:
      config: the run's config (on_nan, nan_max_rollbacks, nan_max_skipped_steps, optimizer.base_lr).
      ckpt: the run's ssl_jax.checkpoint.Checkpointer.
      writer: the run's MetricWriter (events).
      launch_steps: the steps this launch runs (from the restored step to the end).
    """
    self.config, self.ckpt, self.writer = config, ckpt, writer
    self.policy, self.max_rollbacks = config.on_nan, config.nan_max_rollbacks
    self.max_skipped = min(config.nan_max_skipped_steps, launch_steps)
    self.rollbacks = self.skipped_in_a_row = 0
    self._checked_up_to = 0  # steps whose metrics were already judged (a buffer is checked again at log time)

  def prepare(self, state) -> None:
    """Under 'rollback', saves the initial state when there is no checkpoint to roll back to."""
    if self.policy == 'rollback' and self.ckpt.latest_step() is None:
      self.ckpt.save(int(state.step), state, self.config)

  def check(self, pending: list, state):
    """Brings the buffered step metrics and the state's finiteness to the host and applies the policy.

    Args:
      pending: [(step, metrics)] of the steps since the last check (fetched in place); step counts steps
        taken (1-based).
      state: the train state after the last of them: the one that is logged and saved next.

    Returns:
      None to go on as before, or the state to go on with after a rollback (the metrics are dropped).

    Raises:
      NonFiniteLoss: under 'stop'; under 'rollback' once the rollbacks are used up; under 'skip_step' after
        too many skipped steps in a row; under any policy when there is no finite state to go on with.
    """
    steps = [step for step, _ in pending]
    fetched, finite = jax.device_get(([m for _, m in pending], finite_parts(state)))
    pending[:] = zip(steps, fetched)
    fresh = [(step, m) for step, m in pending if step > self._checked_up_to]
    self._checked_up_to = max(steps, default=self._checked_up_to)
    problem = self._skips(fresh) if self.policy == 'skip_step' else next(
        ((step, p) for step, m in fresh if (p := _step_problem(step, m))), None)
    bad_parts = [part for part in STATE_PARTS if not finite[part]]
    if problem is None and bad_parts:
      problem = steps[-1], f'the train state became non-finite (in {", ".join(bad_parts)})'
    if problem is None:
      return None
    if self.policy == 'rollback' and self.rollbacks < self.max_rollbacks:
      pending.clear()
      return self._rollback(*problem, state)
    self._stop(*problem)

  def _skips(self, fresh: list):
    """Records the skipped steps; (step, what) once `max_skipped` steps in a row were skipped, else None."""
    for step, m in fresh:
      if not m['nan_skipped']:
        self.skipped_in_a_row = 0
        continue
      self.skipped_in_a_row += 1
      self.writer.event(step, 'nan_skip_step', f'the loss ({float(m["loss"])}), its gradient or the new state '
                        f'is not finite at step {step}: its update is skipped')
      if self.skipped_in_a_row >= self.max_skipped:
        return step, (f'{self.skipped_in_a_row} steps in a row were skipped as non-finite (the most '
                      f'nan_max_skipped_steps={self.config.nan_max_skipped_steps} allows, or every step of '
                      'this launch)')
    return None

  def _rollback(self, bad_step: int, what: str, state):
    self.rollbacks += 1
    restored = self.ckpt.restore(state)  # the newest finite checkpoint; unusable ones are moved aside
    if restored is None:
      self._stop(bad_step, what)
    now, back_to = int(state.step), int(restored.step)
    self.writer.event(bad_step, 'nan_rollback',
                      f'{what} at step {bad_step}: rolled back to the checkpoint of step {back_to}; steps '
                      f'{back_to + 1}..{now} are dropped and training goes on with the batch of step {now + 1} '
                      f'(rollback {self.rollbacks} of {self.max_rollbacks})')
    return advance_to(restored, now)

  def _stop(self, step: int, what: str):
    after = (f' after {self.rollbacks} rollback(s), the most nan_max_rollbacks={self.max_rollbacks} allows'
             if self.policy == 'rollback' else '')
    kept = self.ckpt.newest_step()  # a save in flight is of a state checked finite: it is waited for
    lower = f'--config.optimizer.base_lr={self.config.optimizer.base_lr / 10:g}'
    if kept is None:
      resume = (f'no checkpoint was saved before it: run the same command again with a lower learning rate, '
               f'{lower}')
    else:
      resume = (f'the last good checkpoint is kept (step {kept}): resume from it with a lower learning rate by '
                f'running the same command with {lower} (optimizer.base_lr and optimizer.warmup_epochs may '
                'change on the resume after a non-finite stop)')
    others = ' or '.join(p for p in ('skip_step', 'rollback') if p != self.policy)
    message = f'{what} at step {step}{after}; {resume}, or set --config.on_nan to {others}'
    self.writer.event(step, 'nan_stop', message)
    self.ckpt.mark_non_finite_stop(step)
    raise NonFiniteLoss(message)


def advance_to(state, step: int):
  """`state` moved on to `step` as if the steps in between had been skipped.

  The step count and every optimizer step count ('count' fields of the optax states, in `opt_state` and the
  probe's) move on by the same amount, so learning-rate schedules and stage switches stay where the step is.
  """
  delta = step - int(state.step)

  def advance(path, x):
    named_count = path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == 'count'
    return x + jnp.asarray(delta, x.dtype) if named_count else x

  return state.replace(step=state.step + jnp.asarray(delta, state.step.dtype),
                       opt_state=jax.tree_util.tree_map_with_path(advance, state.opt_state),
                       probe=jax.tree_util.tree_map_with_path(advance, state.probe))
