"""Checkpoints: an orbax CheckpointManager over the whole train state, plus the config it was trained with.

Resume order: the newest complete checkpoint in `<workdir>/checkpoints`, else a fresh start. Orbax writes each
checkpoint into a temporary directory and renames it when complete, so an interrupted save is never restored.
The data stream needs no saved position: the input pipeline regenerates the batches of any step from the seed.
"""
import json
import pathlib

import jax
import orbax.checkpoint as ocp

from ssl_jax.errors import UserError

# Fields that may change between a run and its resumption without making the checkpoint incompatible.
RESUMABLE_CHANGES = ('total_steps', 'total_epochs', 'log_every_steps', 'eval_every_steps',
                     'checkpoint_every_steps', 'keep_checkpoints', 'eval', 'distributed')


def flatten(tree: dict, prefix: str = '') -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def config_differences(saved: dict, current: dict) -> list[str]:
  """Dotted names of the fields that differ, ignoring the ones a resumed run may change."""
  a, b = flatten(saved), flatten(current)
  keep = lambda k: k.split('.')[0] not in RESUMABLE_CHANGES
  return sorted(k for k in set(a) | set(b) if keep(k) and a.get(k) != b.get(k))


def _comparable(config) -> dict:
  # A JSON round trip turns tuples into lists, as they are in the saved file.
  return json.loads(config.to_json())


class Checkpointer:
  """Saves and restores the train state of one workdir."""

  def __init__(self, workdir, *, keep: int):
    self.directory = pathlib.Path(workdir).absolute() / 'checkpoints'
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=False)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=('state', 'config'))

  def latest_step(self) -> int | None:
    return self.manager.latest_step() if self.directory.exists() else None

  def check_compatible(self, config) -> None:
    """Raises UserError when the workdir holds a checkpoint of a different run; reads only, changes nothing."""
    step = self.latest_step()
    if step is None:
      return
    try:
      saved = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']
    except Exception as e:  # orbax raises many types for unreadable files
      raise UserError(f'the checkpoint at {self.directory}/{step} is unreadable ({type(e).__name__}); '
                      'use a fresh --workdir or delete that step directory') from None
    diff = config_differences(saved, _comparable(config))
    if diff:
      shown = ', '.join(f'{k} (checkpoint {flatten(saved).get(k)!r})' for k in diff[:6])
      raise UserError(f'the workdir holds a checkpoint of a different config: {shown}; '
                      'use a fresh --workdir or the same config to resume')

  def restore(self, abstract_state):
    """The newest checkpoint restored into `abstract_state`'s structure and shardings, or None."""
    step = self.latest_step()
    if step is None:
      return None
    try:
      restored = self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    except Exception as e:
      raise UserError(f'cannot restore the checkpoint at {self.directory}/{step} into this model '
                      f'({type(e).__name__}: {str(e).splitlines()[0][:120]}); use a fresh --workdir') from None
    return restored['state']

  def save(self, step: int, state, config) -> None:
    """Saves `state` as step `step` (in the background; `close` waits for it)."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(_comparable(config))), force=True)

  def close(self) -> None:
    """Waits for a background save to finish."""
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(state):
  """ShapeDtypeStructs with the shardings of `state`: the restore target."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
