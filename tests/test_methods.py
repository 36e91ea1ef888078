"""The method contract, for every framework `methods.available()` lists: its recipe builds, one training step
on 1 device equals the step on 8, and what its CAPABILITIES declare is what the trainer and add-ons do."""
import importlib
import pathlib

import jax
import numpy as np
import pytest

from ssl_jax import data, methods, models, train
from ssl_jax.errors import UserError

import runs

_CONFIGS = pathlib.Path(__file__).resolve().parent.parent / 'configs'


def _recipe(name: str):
  """The first recipe of framework `name` (configs/<name>_*.py): every framework ships at least one."""
  files = sorted(_CONFIGS.glob(f'{name}_*.py'))
  assert files, f'framework {name!r} has no recipe configs/{name}_*.py'
  return importlib.import_module(f'configs.{files[0].stem}')


def _tiny(name: str, dataset: str):
  c = runs.tiny_synthetic(_recipe(name).get_config, steps=1)
  c.data.name = dataset
  c.checkpoint_every_steps = 1
  c.probe.enabled = False
  # The shortest encoder the method can use keeps 2 x 9 compiles cheap (SelfCon branches after a stage).
  c.model.num_stages = c.selfcon.exit_stage + 1 if 'selfcon' in c else 1
  # The ViT MoCo v3 step equals on 1 and 8 devices when compiled, but XLA:CPU of jaxlib 0.10.2 aborts when it
  # runs these programs loaded back from the persistent compilation cache (a second run of this test), which
  # test_mocov3 shares; the ViT's own tests cover it on one device. Known gap, in this release's closing note.
  if models.family(c.model.name) == 'vit':
    c.model.name = 'resnet18'
  return c


@pytest.fixture(scope='module')
def datasets():
  """A labelled and an unlabelled (labels -1) in-memory split of the same 16-px images."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
  data.register_memory_dataset('contract_labelled', images, rng.integers(0, 4, 64), num_classes=4)
  data.register_memory_dataset('contract_unlabelled', images, np.full(64, -1), num_classes=0)
  return 'contract_labelled', 'contract_unlabelled'


@pytest.mark.parametrize('name', methods.available())
def test_declared_capabilities_are_honoured(name, datasets, tmp_path):
  labelled, unlabelled = datasets
  c = _tiny(name, unlabelled)
  runs.check(c)
  method = methods.get_method(c)
  caps = method.capabilities
  assert caps is importlib.import_module(f'ssl_jax.methods.{name}').CAPABILITIES
  assert set(caps.addons) <= set(methods.ADDONS)
  for block in caps.config_blocks:   # a config without a declared block is refused, naming it
    parent, _, leaf = block.rpartition('.')
    stripped = _tiny(name, unlabelled)
    del (stripped[parent] if parent else stripped)[leaf]
    with pytest.raises(UserError, match=f'needs the config block `{block}`'):
      runs.check(stripped)
  for addon in set(methods.ADDONS) - set(caps.addons):   # an add-on it does not declare is refused
    refused = _tiny(name, unlabelled)
    refused[addon].enabled = True
    with pytest.raises(UserError, match=f'{addon}.enabled=True does not support method {name!r}'):
      runs.check(refused)
  if caps.labels_needed(c):   # refused on a split without labels before anything is written
    with pytest.raises(UserError, match='has no labels'):
      train.train_and_evaluate(c, tmp_path / 'refused')
    assert not (tmp_path / 'refused').exists()
    c.data.name = labelled
  # One step on 1 device equals the step on 8 (unsupervised frameworks train on the unlabelled split).
  for run, devices in (('one', jax.devices()[:1]), ('eight', jax.devices())):
    train.train_and_evaluate(c, tmp_path / run, devices=devices)
  one, eight = runs.final_state(tmp_path / 'one'), runs.final_state(tmp_path / 'eight')
  assert np.isfinite(runs.logged(tmp_path / 'one')).all()
  np.testing.assert_allclose(runs.logged(tmp_path / 'one'), runs.logged(tmp_path / 'eight'), rtol=1e-5,
                             atol=1e-6)
  # Parameters, BatchNorm statistics (ghost groups, per-view passes) and method state alike.
  parts = ('params', 'batch_stats', 'extra')
  for a, b in zip(jax.tree.leaves([one[k] for k in parts]), jax.tree.leaves([eight[k] for k in parts])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
