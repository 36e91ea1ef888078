"""Tiny training runs and checkpoint readers shared by the trainer-level tests."""
import json
import os
import signal

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

from configs import simclr_cifar10
from ssl_jax import config_schema, sharding, train
from ssl_jax.errors import Preempted


def tiny_synthetic(get_config=simclr_cifar10.get_config, steps: int = 3):
  """A recipe's `:runlocal,synthetic` variant on 16-px synthetic data: no TensorFlow, a few seconds."""
  c = get_config('runlocal,synthetic')
  c.total_steps = steps
  c.log_every_steps = 1
  c.checkpoint_every_steps = 3
  c.data.synthetic_examples = 64
  c.data.synthetic_shape = (16, 16, 3)
  c.eval.final = False
  return c


def check(config):
  """`config` through the two places the trainer checks a config, in its order: the schema (each field), then
  `train.check_run` (across fields; on a one-device mesh, so any batch size passes the device rule)."""
  config_schema.validate(config)
  train.check_run(config, sharding.make_mesh(jax.devices()[:1]))


def shared_synthetic(keep_checkpoints=None):
  """The trainer tests' common run: 6 steps with ghost BatchNorm groups of 4, one compiled step for all."""
  c = tiny_synthetic(steps=6)
  c.model.bn_group_size = 4
  if keep_checkpoints is not None:  # not part of the compiled step
    c.keep_checkpoints = keep_checkpoints
  return c


def checkpoints(workdir) -> dict:
  """{step: restored train state (nested dicts of numpy arrays)} for every checkpoint in `workdir`."""
  with ocp.CheckpointManager(os.path.join(workdir, 'checkpoints')) as mgr:
    args = ocp.args.Composite(state=ocp.args.StandardRestore())
    return {s: jax.device_get(mgr.restore(s, args=args)['state']) for s in mgr.all_steps()}


def final_state(workdir) -> dict:
  states = checkpoints(workdir)
  return states[max(states)]


def logged(workdir, key: str = 'loss') -> list:
  return [json.loads(l)[key] for l in open(os.path.join(workdir, 'metrics.jsonl'))]


def preempt_after_step_3(config, workdir, monkeypatch) -> None:
  """Runs `config` with a real SIGTERM delivered while step 2 is logged: it must save after step 3 and stop."""
  original = train.MetricWriter.write

  def write_then_signal(self, step, metrics, **kw):
    original(self, step, metrics, **kw)
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)

  with monkeypatch.context() as patch:
    patch.setattr(train.MetricWriter, 'write', write_then_signal)
    with pytest.raises(Preempted, match='after step 3'):
      train.train_and_evaluate(config, workdir)


def poison_params_before(monkeypatch, steps) -> None:
  """Makes the parameters NaN just before the steps at these 0-based positions, in every run that follows.

  What a diverging update would leave behind, without changing the compiled step (its cache entry is shared).
  """
  make = train.make_train_step

  def make_poisoned(*args, **kwargs):
    step_fn = make(*args, **kwargs)

    def poisoned(state, batch):
      if int(state.step) in steps:
        state = state.replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))
      return step_fn(state, batch)
    return poisoned

  monkeypatch.setattr(train, 'make_train_step', make_poisoned)
