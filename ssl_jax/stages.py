"""Training in stages: each stage with its own view resolution, length and optimizer settings.

S3L (Cao & Wu, arXiv 2103.13559) pretrains at a small resolution and then continues at a larger one, e.g.
200 epochs at 112 px and 50 more at 224 px, stage 2 starting from the stage-1 model with a fresh optimizer
and learning-rate schedule. `config.stages` describes such a run: a tuple of dicts, one per stage, in order,
with the fields

  image_size          side of the stage's views (one compiled train step per distinct size)
  epochs or steps     the stage's length: exactly one of them > 0 (epochs of the training split)
  optimizer           dict of `config.optimizer` fields that differ in this stage, e.g. {'base_lr': 0.03}
  restart_optimizer   True (default): the stage starts a fresh optimizer (its state from init: momentum 0)
                      and its own learning-rate schedule over its own steps (warm-up and decay start
                      over), as S3L's code; False: it continues the previous stage's optimizer and schedule
                      (one schedule spans the stages it joins; `optimizer` must then be empty)

Everything else carries over exactly at a stage boundary: parameters, batch statistics, the method state
(MoCo's queue and key encoder, BYOL's target), the online probe, the step count and the RNG stream; the data
stream continues where it was (same epoch order), only its views change size. Checkpoints hold the state of
every optimizer segment (`optim.staged`), so a run resumes exactly in any stage.

Random-resized crops are always taken from the full-resolution image and resized to the stage's size:
fixed-size datasets are cropped on the device from the stored image; variable-size datasets (cropped on the
host) get a pipeline per stage that cuts its crops at that stage's size (`stage_batches`), never a crop
resized twice.

`stages = ()` (the default) is one stage: `data.image_size` for `total_steps` (or `total_epochs`) with
`config.optimizer`. With stages, the stages set the run's length: `total_steps` must stay 0 and
`total_epochs` is not read. `data.image_size` stays the resolution of evaluation (kNN monitor, final
probes, `load_encoder`); the recipes set it to the last stage's size.
"""
import dataclasses
import itertools
from typing import Any

import ml_collections

from ssl_jax.errors import UserError

_FIELDS = ('image_size', 'epochs', 'steps', 'optimizer', 'restart_optimizer')


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage of a run: steps [first_step, first_step + num_steps) at views of `image_size`."""
  first_step: int
  num_steps: int
  image_size: int
  optimizer: Any            # this stage's `config.optimizer` (its overrides applied)
  restart_optimizer: bool

  @property
  def end_step(self) -> int:
    return self.first_step + self.num_steps


@dataclasses.dataclass(frozen=True)
class Plan:
  """The stages of a run, in order, with their steps."""
  stages: tuple

  @property
  def total_steps(self) -> int:
    return self.stages[-1].end_step

  def at(self, step: int) -> Stage:
    """The stage that step `step` (0-based) belongs to; the last stage after the end."""
    return next((s for s in self.stages if step < s.end_step), self.stages[-1])

  def image_size_at(self, step: int) -> int:
    return self.at(step).image_size

  def optimizer_segments(self) -> tuple:
    """((first_step, num_steps, optimizer_cfg), ...): one per stage that restarts the optimizer, spanning
    the stages that continue it (`optim.create_staged_optimizer`)."""
    segments = []
    for stage in self.stages:
      if stage.restart_optimizer or not segments:
        segments.append([stage.first_step, stage.num_steps, stage.optimizer])
      else:
        segments[-1][1] += stage.num_steps
    return tuple(tuple(s) for s in segments)


def image_sizes(config) -> list[int]:
  """The view resolutions of the run in stage order (`data.image_size` when there are no stages)."""
  return [int(s['image_size']) for s in config.stages] or [int(config.data.image_size)]


def check(config) -> None:
  """Raises UserError for a `config.stages` the run cannot use; needs no data (runs before any compute)."""
  if not config.stages:
    return
  if config.total_steps:
    raise UserError(f'total_steps={config.total_steps} is set but config.stages sets the run\'s length; give '
                    'each stage its epochs or steps and leave total_steps at 0')
  for i, stage in enumerate(config.stages):
    _check_stage(i, stage, config.optimizer)


def _check_stage(i: int, stage, optimizer_cfg) -> None:
  where = f'stages[{i}]'
  if not isinstance(stage, dict):
    raise UserError(f'{where} is {stage!r}; each stage is a dict such as '
                    "{'image_size': 112, 'epochs': 200}")
  unknown = sorted(set(stage) - set(_FIELDS))
  if unknown:
    raise UserError(f'{where} has unknown field(s) {", ".join(unknown)}; the fields are {", ".join(_FIELDS)}')
  if int(stage.get('image_size', 0)) <= 0:
    raise UserError(f'{where} needs a positive image_size, e.g. {{"image_size": 112, "epochs": 200}}')
  epochs, steps = stage.get('epochs', 0), stage.get('steps', 0)
  if (epochs > 0) == (steps > 0) or min(epochs, steps) < 0:
    raise UserError(f'{where} needs exactly one of epochs > 0 or steps > 0 (got epochs={epochs}, '
                    f'steps={steps})')
  overrides = dict(stage.get('optimizer') or {})
  unknown = sorted(set(overrides) - set(optimizer_cfg))
  if unknown:
    raise UserError(f'{where}.optimizer has unknown field(s) {", ".join(unknown)}; use fields of '
                    'config.optimizer')
  if overrides and not stage.get('restart_optimizer', True):
    raise UserError(f'{where} continues the previous optimizer (restart_optimizer=False) and cannot change '
                    'its settings; drop its optimizer fields or restart the optimizer')


def plan(config, steps_per_epoch: int) -> Plan:
  """The run's stages with their step ranges.

  Args:
    config: the run's ConfigDict (`stages`, or `data.image_size`, `total_steps` / `total_epochs`).
    steps_per_epoch: full global batches per epoch of the training split.

  Returns:
    A Plan whose stages tile steps [0, total_steps).
  """
  check(config)
  if not config.stages:
    total = config.total_steps or max(int(config.total_epochs * steps_per_epoch), 1)
    return Plan((Stage(0, total, int(config.data.image_size), config.optimizer, True),))
  stages, first = [], 0
  for i, s in enumerate(config.stages):
    num_steps = int(s.get('steps', 0)) or max(round(s['epochs'] * steps_per_epoch), 1)
    optimizer = ml_collections.ConfigDict(config.optimizer.to_dict())
    optimizer.update(dict(s.get('optimizer') or {}))
    restart = bool(s.get('restart_optimizer', True)) or i == 0
    stages.append(Stage(first, num_steps, int(s['image_size']), optimizer, restart))
    first += num_steps
  return Plan(tuple(stages))


def stage_batches(run_plan: Plan, source_for, *, start_step: int, **kwargs):
  """The training batches of steps [start_step, total_steps), each stage's from its own source.

  Every stage's source continues the same stream (the order of each epoch is fixed by (seed, epoch), and
  `train_batches(start_step=k)` yields what an uninterrupted iterator yields from step k on), so only the size
  of the host crops changes at a boundary. Every stage's pipeline is set up here, before training starts, so
  a stage that cannot read its data fails before any compute.

  Args:
    run_plan: the run's stages.
    source_for: image_size -> the training source whose host crops (if any) have that size.
    start_step: the first step to produce.
    **kwargs: the other arguments of the sources' `train_batches` (global_batch_size, seed, ...).

  Returns:
    A generator of the batches of the sources' `train_batches`, one per step; `close()` lets every
    pipeline go.
  """
  parts = []
  for stage in run_plan.stages:
    if stage.end_step > start_step:
      begin = max(start_step, stage.first_step)
      batches = source_for(stage.image_size).train_batches(start_step=begin, **kwargs)
      parts.append(itertools.islice(batches, stage.end_step - begin))

  def chained():
    while parts:
      yield from parts.pop(0)  # a finished stage's pipeline is let go

  return chained()
