"""What the trainer does when the loss becomes NaN or Inf: `config.on_nan`.

  stop       (default) stop with exit code 1, naming the step; the last good checkpoint is kept.
  skip_step  the step's update is dropped on the device: parameters, batch statistics, optimizer and method
             state and the online probe stay as they were when the loss, the gradient norm or the new
             parameters are not finite (`skip_if_non_finite`, inside the jitted step: no host sync per
             step). The step still counts: the next step takes the next batch. Each log record counts the
             skipped steps of its interval (`nan_skipped_steps`) and averages the others only.
  rollback   back to the newest checkpoint, then on with the next batch: the state of that checkpoint
             continues at the current step, as if the steps since the checkpoint had been skipped (their
             batches are not seen again, and the optimizers' own step counts, which drive the learning-rate
             schedules, move on with the step). At most `nan_max_rollbacks` times per launch, then stop.
             A run starting without any checkpoint saves its initial state first, to have one.

Non-finite losses are noticed when the step metrics come to the host: at every log step and before every
checkpoint (so no checkpoint ever holds a bad state under 'stop' and 'rollback'). Every event is a record in
metrics.jsonl ({'step', 'time', 'event', 'message'}) and a console line.
"""
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import checkpoint
from ssl_jax.errors import NonFiniteLoss


def skip_if_non_finite(old, new, metrics: dict):
  """`new` where the step was finite, else `old` with the step count advanced; adds 'nan_skipped' (0 or 1).

  Args:
    old: the train state before the step.
    new: the train state after it.
    metrics: the step's metrics, with scalar 'loss', 'grad_norm' and 'param_norm'.

  Returns:
    (state, metrics).
  """
  finite = (jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])
            & jnp.isfinite(metrics['param_norm']))
  kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  return kept.replace(step=new.step), {**metrics, 'nan_skipped': 1.0 - finite.astype(jnp.float32)}


class Guard:
  """Applies `config.on_nan` to the step metrics the loop brings to the host."""

  def __init__(self, config, ckpt: checkpoint.Checkpointer, writer):
    self.config, self.ckpt, self.writer = config, ckpt, writer
    self.policy, self.max_rollbacks = config.on_nan, config.nan_max_rollbacks
    self.rollbacks = 0
    self._checked_up_to = 0  # steps whose metrics were already judged (a buffer is checked again at log time)

  def prepare(self, state) -> None:
    """Under 'rollback', saves the initial state when there is no checkpoint to roll back to."""
    if self.policy == 'rollback' and self.ckpt.latest_step() is None:
      self.ckpt.save(int(state.step), state, self.config)

  def check(self, pending: list, state):
    """Brings the buffered step metrics to the host (in place) and applies the policy.

    Args:
      pending: [(step, metrics)] of the steps since the last check; step counts steps taken (1-based).
      state: the train state after the last of them.

    Returns:
      None to go on as before, or the state to go on with after a rollback (the metrics are dropped).

    Raises:
      NonFiniteLoss: under 'stop', and under 'rollback' once the rollbacks are used up.
    """
    steps = [step for step, _ in pending]
    pending[:] = zip(steps, jax.device_get([m for _, m in pending]))
    fresh = [(step, m) for step, m in pending if step > self._checked_up_to]
    self._checked_up_to = max(steps, default=self._checked_up_to)
    if self.policy == 'skip_step':
      for step, m in fresh:
        if m['nan_skipped']:
          self.writer.event(step, 'nan_skip_step', f'the loss ({float(m["loss"])}) or its gradient is not '
                            f'finite at step {step}: its update is skipped')
      return None
    bad = next(((step, float(m['loss'])) for step, m in fresh if not np.isfinite(m['loss'])), None)
    if bad is None:
      return None
    if self.policy == 'rollback' and self.rollbacks < self.max_rollbacks:
      pending.clear()
      return self._rollback(*bad, state)
    self._stop(*bad)

  def _rollback(self, bad_step: int, loss: float, state):
    self.rollbacks += 1
    restored = self.ckpt.restore(checkpoint.abstract_like(state))
    now, back_to = int(state.step), int(restored.step)
    self.writer.event(bad_step, 'nan_rollback',
                      f'the loss became {loss} at step {bad_step}: rolled back to the checkpoint of step '
                      f'{back_to}; steps {back_to + 1}..{now} are dropped and training goes on with the '
                      f'batch of step {now + 1} (rollback {self.rollbacks} of {self.max_rollbacks})')
    return advance_to(restored, now)

  def _stop(self, step: int, loss: float):
    after = (f' after {self.rollbacks} rollback(s), the most nan_max_rollbacks={self.max_rollbacks} allows'
             if self.policy == 'rollback' else '')
    message = (f'the loss became {loss} at step {step}{after}; the last good checkpoint is kept: lower '
               'optimizer.base_lr or raise optimizer.warmup_epochs and resume, or set --config.on_nan to '
               'skip_step or rollback')
    self.writer.event(step, 'nan_stop', message)
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
