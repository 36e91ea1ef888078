"""Scores a frozen encoder: kNN during training, kNN and a linear probe at the end.

The encoder always runs in inference mode (BatchNorm running statistics) on un-augmented images: the train
split is the kNN bank and the probe's training set, the eval split is the query / test set. At the end the
same scores are computed for the encoder's random initialisation, the baseline pretraining has to beat.
"""
import functools
import itertools
import time

from flax import nnx
import jax

from ssl_jax import data, models, progress, sharding
from ssl_jax.errors import UserError
from ssl_jax.evaluate import exits
from ssl_jax.evaluate.features import extract_features, inference_features
from ssl_jax.evaluate.knn import knn_accuracy
from ssl_jax.evaluate.linear_probe import linear_probe_accuracy


class FrozenEncoderEval:
  """Feature extraction over the train and eval splits, and the scores computed from the features."""

  def __init__(self, config, method, graphdef, mesh, *, in_channels: int):
    self.config, self.method, self.mesh, self.in_channels = config, method, mesh, in_channels
    sharding.check_batch_size(config.eval.batch_size, mesh, what='eval.batch_size')
    self.bank = data.get_source(config.data, split=config.data.train_split, train=False)
    self.test = data.get_source(config.data, split=config.data.eval_split, train=False)
    if self.test.num_classes <= 1:
      raise UserError(f'data.eval_split={config.data.eval_split!r} of {config.data.name} has no class labels '
                      'to evaluate with; choose a labelled split')
    self._features = jax.jit(functools.partial(inference_features, graphdef, resolution=config.data.image_size))
    self.graphdef = graphdef
    self._exit_features = jax.jit(functools.partial(inference_features, graphdef,
                                                    resolution=config.data.image_size, exits=True))

  def _extract(self, params, batch_stats, source, limit: int = 0, features=None):
    """Features and labels of the labelled examples of `source` in its fixed order (the first `limit`)."""
    apply = lambda images: (features or self._features)(params, batch_stats, images)
    batches = source.eval_batches(global_batch_size=self.config.eval.batch_size,
                                  process_index=jax.process_index(), process_count=jax.process_count())
    count = data.sources.eval_batch_count(source.num_examples, self.config.eval.batch_size)
    if limit:  # the bank's memory and time are bounded by its size, not by the split's
      count = min(count, -(-limit // self.config.eval.batch_size))
      batches = itertools.islice(batches, count)
    batches = progress.counted(batches, f'features of {source.name}: batch', count)  # a line every 30 s
    feats, labels = extract_features(apply, (sharding.global_batch(b, self.mesh) for b in batches))
    keep = labels >= 0  # unlabelled examples (label -1) cannot vote or be scored
    feats, labels = feats[keep], labels[keep]
    return (feats[:limit], labels[:limit]) if limit else (feats, labels)

  def _bank_and_test(self, params, batch_stats):
    bank = self._extract(params, batch_stats, self.bank, limit=self.config.eval.knn_bank_size)
    return bank, self._extract(params, batch_stats, self.test)

  def knn(self, params, batch_stats) -> dict:
    """kNN top-1 on the eval split for every k of `eval.knn_ks` (numbers only: the monitor's metrics)."""
    return self._knn_scores(*self._bank_and_test(params, batch_stats))

  def _knn_scores(self, bank, test) -> dict:
    e = self.config.eval
    scores = {f'knn_top1_k{k}': knn_accuracy(*bank, *test, num_classes=self.test.num_classes, k=k,
                                             temperature=e.knn_temperature) for k in e.knn_ks}
    return {'knn_top1': scores[f'knn_top1_k{e.knn_ks[0]}'], **scores}

  def _scores(self, params, batch_stats) -> dict:
    """kNN and linear-probe top-1 of the encoder, and the kNN protocol in words."""
    e = self.config.eval
    (bank_x, bank_y), (test_x, test_y) = self._bank_and_test(params, batch_stats)
    linear = linear_probe_accuracy(bank_x, bank_y, test_x, test_y, num_classes=self.test.num_classes,
                                   epochs=e.linear_epochs, lr=e.linear_lr, weight_decay=e.linear_weight_decay,
                                   seed=self.config.seed)
    protocol = (f'cosine kNN, k={e.knn_ks[0]}, vote weight exp(sim/{e.knn_temperature}), bank: the first '
                f'{len(bank_x)} labelled images of {self.config.data.train_split!r}, queries: '
                f'{self.config.data.eval_split!r}, encoder in inference mode, no augmentation')
    return {**self._knn_scores((bank_x, bank_y), (test_x, test_y)), 'knn_protocol': protocol,
            'linear_top1': float(linear['top1'])}

  def _exit_scores(self, params, batch_stats) -> dict:
    """Multi-exit models (SelfCon): the linear probe's top-1 on each other exit and on the exits' ensemble."""
    names = exits.exit_names(nnx.merge(self.graphdef, params, batch_stats))
    if len(names) < 2:
      return {}
    e = self.config.eval
    bank = self._extract(params, batch_stats, self.bank, limit=e.knn_bank_size, features=self._exit_features)
    test = self._extract(params, batch_stats, self.test, features=self._exit_features)
    scores = exits.probe_exits({n: bank[0][:, i] for i, n in enumerate(names)}, bank[1],
                               {n: test[0][:, i] for i, n in enumerate(names)}, test[1],
                               num_classes=self.test.num_classes, per_epoch=False, epochs=e.linear_epochs,
                               lr=e.linear_lr, weight_decay=e.linear_weight_decay, seed=self.config.seed)
    return {f'linear_top1_{name}': s['top1'] for name, s in scores.items() if name != 'backbone'}

  def final(self, params, batch_stats) -> dict:
    """Scores of the trained encoder (each exit of a multi-exit one) and, if asked, of its random init."""
    parts = 2 if self.config.eval.compare_random_init else 1
    progress.note(f'final evaluation: kNN and linear probe of the trained encoder (part 1/{parts})')
    started = time.perf_counter()
    results = {**self._scores(params, batch_stats), **self._exit_scores(params, batch_stats)}
    if self.config.eval.compare_random_init:
      progress.note(f'final evaluation: the same for the random initialisation, the baseline (part 2/2) | ETA '
                    f'{progress.duration(time.perf_counter() - started)}')
      # Rebuilding from the seed gives exactly the parameters this run started from.
      init = models.build_compiled(lambda: self.method.build_model(
          self.config, in_channels=self.in_channels, rngs=nnx.Rngs(self.config.seed)), sharding.replicated(self.mesh))
      _, init_params, init_stats = nnx.split(init, nnx.Param, nnx.BatchStat)
      baseline = self._scores(init_params, init_stats)
      results.update(random_init_knn_top1=baseline['knn_top1'], random_init_linear_top1=baseline['linear_top1'])
    results['linear_protocol'] = (f'softmax classifier (AdamW, {self.config.eval.linear_epochs} epochs) on '
                                  'standardised features extracted once without augmentation, on the kNN bank; '
                                  'encoder in inference mode')
    return results
