"""Evaluation of frozen and fine-tuned encoders. One file each:

Libraries (plain (N, D) feature arrays in, numbers out, so any encoder, exit or ensemble is scored the same):
  features.py      inference-mode features of a model, and feature extraction over a split's batches
  knn.py           weighted kNN top-1 / top-5 against a feature bank
  linear_probe.py  a linear classifier trained on frozen features
  exits.py         multi-exit models (SelfCon): a probe per exit and the exit ensemble
Inside training:
  online_probe.py  the linear probe updated in every train step on stop-gradient features
  frozen.py        the trainer's evaluator: kNN during training, kNN and the linear probe at the end
Command lines:
  linear_cli.py    python -m ssl_jax.evaluate.linear_cli: linear evaluation of a trained run
  finetune_cli.py  python -m ssl_jax.evaluate.finetune_cli: fine-tuning of a trained run
"""
