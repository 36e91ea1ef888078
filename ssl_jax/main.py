"""Command line: `python -m ssl_jax.main --config configs/NAME.py[:ARG] --workdir DIR [--config.a.b=VALUE ...]`.

Exit codes: 0 done; 2 bad input (one line on stderr says what and how to fix it; nothing was written): a bad
flag or config value, missing data, a checkpoint of a different config, a workdir another live run holds, or
a full disk while saving (the previous checkpoint is intact); 1 the loss became non-finite and `on_nan` says
stop (the last good checkpoint is kept); 143 stopped by SIGTERM/SIGINT after saving a checkpoint.
"""
import os
import pathlib
import sys

# Before anything imports TensorFlow: keep its start-up notices out of the log.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
# Recipes import `configs.common`; make the repository root importable however the CLI is started.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ssl_jax import config_schema, recipes  # noqa: E402
from ssl_jax.errors import NonFiniteLoss, Preempted, UserError  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Recipe: configs/NAME.py[:ARG] or NAME[:ARG].',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')


def _fail(message: str, code: int):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(code)


def _parse_flags(argv):
  """absl's parser, but a bad flag or config override is one line and exit code 2."""
  try:
    rest = flags.FLAGS(recipes.resolve_flag(argv))  # a recipe given by name becomes its file
  except UserError as e:
    _fail(str(e), 2)
  except (flags.Error, ValueError, TypeError, AttributeError, KeyError) as e:
    _fail(f'{str(e).strip().splitlines()[-1]} (see --helpfull)', 2)
  if _CONFIG.value is None or not _WORKDIR.value:
    _fail('both --config and --workdir are required, e.g. '
          '--config configs/simclr_digits.py:runlocal --workdir /tmp/run', 2)
  return rest


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax and tfds are chatty at INFO; progress goes to stderr
  try:
    config_schema.validate(_CONFIG.value)  # every field, before anything is built or written
  except UserError as e:
    _fail(str(e), 2)
  from ssl_jax import train  # imported late so that flag errors are instant
  try:
    results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except UserError as e:
    _fail(str(e), 2)
  except NonFiniteLoss as e:
    _fail(str(e), 1)
  except Preempted as e:
    _fail(str(e), 143)
  print('results: ' + ', '.join(f'{k}={v}' for k, v in results.items()))


def run(argv: list[str]) -> None:
  """The command line without absl's app wrapper, callable repeatedly (tests): argv[0] is the program name.

  ml_collections reads `--config.*` overrides from sys.argv, so `argv` is installed there first, and it
  defines a flag per override, so those of an earlier call are removed.
  """
  for name in [n for n in flags.FLAGS if n.startswith('config.')]:
    delattr(flags.FLAGS, name)
  flags.FLAGS.unparse_flags()
  sys.argv = list(argv)
  main(_parse_flags(sys.argv))


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
