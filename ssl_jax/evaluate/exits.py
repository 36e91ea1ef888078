"""Multi-exit models (SelfCon): a linear probe on every exit and on their ensemble.

A model with several exits names them in `model.exit_names` (backbone first) and returns their features from
`model.exit_features(images, *, train)` in that order; `model.exit_model(name)` is a module whose `features`
are that exit's, so `ssl_jax.encoder.Encoder` can embed with any exit. The ensemble is the mean of the
exits' probe logits (SelfCon's official `main_linear.py --subnet`), scored like every probe: top-1 / top-5 of
the last epoch and of the best epoch.

    encoder = ssl_jax.load_encoder(workdir)
    sub = encoder.exits()['sub']                 # an Encoder of the sub-network exit
    feats = sub.embed(images)                    # (N, D)
"""
from collections.abc import Sequence

import jax
import numpy as np

from ssl_jax.evaluate.linear_probe import linear_predict, topk_accuracy, train_linear_probe

ENSEMBLE = 'ensemble'


def exit_names(model) -> tuple[str, ...]:
  """The exits of `model`, backbone first; ('backbone',) for single-exit models."""
  return tuple(getattr(model, 'exit_names', ('backbone',)))


def summarize(history: Sequence[dict]) -> dict:
  """{'top1', 'top5' (last epoch), 'best_top1', 'best_top5', 'best_epoch' (1-based), 'top1_per_epoch'}."""
  best = max(range(len(history)), key=lambda i: history[i]['top1'])  # the first of equally good epochs
  return {**history[-1], 'best_top1': history[best]['top1'], 'best_top5': history[best]['top5'],
          'best_epoch': best + 1, 'top1_per_epoch': [h['top1'] for h in history]}


def probe_exits(train_feats: dict, train_labels, test_feats: dict, test_labels, *, num_classes: int,
                per_epoch: bool = True, **probe_kwargs) -> dict:
  """Trains a linear probe per exit and scores each exit and the ensemble of all of them.

  Args:
    train_feats: {exit name: (N, D) features, or a function epoch -> (N, D) (augmented protocols)}.
    train_labels: (N,) labels, the same rows for every exit.
    test_feats: {exit name: (M, D) features}, the same names.
    test_labels: (M,) labels.
    num_classes: number of classes C.
    per_epoch: score after every epoch (best and last epoch); False scores only the trained probes.
    **probe_kwargs: `train_linear_probe` arguments (epochs, batch_size, lr, optimizer, seed, ...).

  Returns:
    {exit name: summary, ..., 'ensemble': summary} with `summarize`'s keys; the ensemble's logits are the
    mean of the exits' logits at the same epoch.
  """
  params = {}
  for name, feats in train_feats.items():
    saved = []
    # Host copies: the probe's buffers are donated to its next epoch.
    keep = (lambda p, saved=saved: saved.append(jax.device_get(p))) if per_epoch else None
    final = train_linear_probe(feats, train_labels, num_classes=num_classes, after_epoch=keep, **probe_kwargs)
    params[name] = saved if per_epoch else [jax.device_get(final)]
  history = {name: [] for name in [*params, ENSEMBLE]}
  for epoch in range(len(next(iter(params.values())))):
    logits = {name: np.asarray(linear_predict(p[epoch], test_feats[name])) for name, p in params.items()}
    logits[ENSEMBLE] = np.mean(list(logits.values()), axis=0)
    for name, lg in logits.items():
      history[name].append(topk_accuracy(lg, test_labels))
  return {name: summarize(h) for name, h in history.items()}


def flat_scores(scores: dict) -> dict:
  """The other exits' and the ensemble's last and best top-1, flat: {'sub_top1', 'sub_best_top1', ...}."""
  out = {}
  for name, s in scores.items():
    if name != 'backbone':
      out.update({f'{name}_top1': s['top1'], f'{name}_best_top1': s['best_top1']})
  return out
