"""Command line: `python -m ssl_jax.main --config configs/NAME.py[:ARG] --workdir DIR [--config.a.b=VALUE ...]`.

Progress lines (`[<seconds> s] what it is doing`) and the training log go to stderr; the first comes before
jax is imported. `--verbose` shows the INFO logs of TensorFlow, tfds and orbax. The workdir may be relative,
absolute or start with `~`. `--check` only checks the recipe, its arguments and every config field (the
launchers run it before they create anything).

Exit codes: 0 done; 2 bad input (one line on stderr says what and how to fix it; nothing was written): a bad
flag or config value, missing data, a checkpoint of a different config, a workdir another live run holds, or
a full disk while saving (the previous checkpoint is intact); 1 the loss became non-finite and `on_nan` says
stop (the last good checkpoint is kept); 143 stopped by SIGTERM/SIGINT after saving a checkpoint.
"""
import contextlib
import difflib
import importlib.util
import pathlib
import sys

# Recipes import `configs.common`; make the repository root importable however the CLI is started.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from ssl_jax import progress  # noqa: E402  (first: its clock is the elapsed time of every progress line)

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ssl_jax import config_schema, paths, recipes  # noqa: E402
from ssl_jax.errors import NonFiniteLoss, Preempted, UserError, hide_closed_event_loop_errors  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Recipe: configs/NAME.py[:ARG] or NAME[:ARG].',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
_VERBOSE = flags.DEFINE_bool('verbose', False, 'Show the INFO logs of TensorFlow, tfds and orbax.')
_CHECK = flags.DEFINE_bool('check', False, 'Only check the recipe, its arguments and every config field (and '
                           'the workdir, when given), then exit: the launchers run this before creating anything.')


def _fail(message: str, code: int):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(code)


def _config_arg(argv) -> str | None:
  """The value of --config in `argv` ('configs/NAME.py[:ARG]'), or None."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.partition('=')[2]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _check_config_file(spec: str) -> None:
  """A missing recipe file is one line naming the closest recipe, not ml_collections' traceback on access."""
  path = pathlib.Path(spec.split(':', 1)[0])
  if path.is_file():
    return
  recipes = sorted(str(p) for p in (path.parent if path.parent.is_dir() else pathlib.Path('configs')).glob('*.py')
                   if not p.name.startswith('_') and p.name != 'common.py')
  close = difflib.get_close_matches(str(path), recipes, n=1, cutoff=0.8)
  hint = f'did you mean {close[0]}?' if close else 'pass a recipe of configs/, e.g. configs/simclr_digits.py'
  raise UserError(f'config file {path} does not exist; {hint}')


def _close_field(name: str, fields: list[str]) -> str | None:
  """The field `name` was probably meant to be: a close spelling, or one that contains it as a word."""
  close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6)
  return close[0] if close else next((f for f in fields if name in f.split('_')), None)


def _unknown_override(spec: str, argv) -> str | None:
  """The message for the first --config.a.b=... override that names no field of the recipe, or None."""
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('_recipe', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = (module.get_config(arg) if arg else module.get_config()).to_dict()
  for override in argv:
    if not override.startswith('--config.'):
      continue
    dotted = override[len('--config.'):].partition('=')[0]
    node, seen = config, []
    for name in dotted.split('.'):
      if not isinstance(node, dict) or name not in node:
        fields = list(node) if isinstance(node, dict) else []
        where = '.'.join(seen)
        close = _close_field(name, fields)
        prefix = f'{where}.' if where else ''
        shown = ', '.join(fields[:10]) + (', ...' if len(fields) > 10 else '')
        hint = (f'did you mean --config.{prefix}{close}?' if close else
                f'the fields of {where or "this recipe"} are {shown}' if fields else
                f'{where} is a value, not a block of fields')
        return f'config field {dotted!r} is unknown; {hint}'
      node, seen = node[name], seen + [name]
  return None


def _parse_flags(argv):
  """absl's parser, but a bad flag, recipe, recipe argument or config override is one line and exit code 2."""
  spec = _config_arg(argv)
  try:
    if spec:
      progress.note(f'reading the config {spec} (importing jax)')
      argv = recipes.resolve_flag(argv)  # a recipe given by name becomes its file
      spec = _config_arg(argv)
      _check_config_file(spec)
    rest = flags.FLAGS(argv)
  except UserError as e:  # a recipe's own check of its arguments (configs/common.py parse_arg)
    _fail(str(e), 2)
  except (flags.Error, ValueError, TypeError, AttributeError, KeyError) as e:
    unknown = None
    if spec:
      with contextlib.suppress(Exception):  # only a better message; the original error stands otherwise
        unknown = _unknown_override(spec, argv)
    last = str(e).strip().splitlines()[-1]
    if 'Error whilst parsing config file' in str(e):  # the recipe refused its argument: its message, untraced
      last = f'config {spec}: {last.partition(": ")[2] or last}'
    else:
      last += ' (see --helpfull)'
    _fail(unknown or last, 2)
  if _CONFIG.value is None or not (_WORKDIR.value or _CHECK.value):
    _fail('both --config and --workdir are required, e.g. '
          '--config configs/simclr_digits.py:runlocal --workdir /tmp/run', 2)
  return rest


def main(argv):
  del argv
  progress.set_verbosity(_VERBOSE.value)
  try:
    config_schema.validate(_CONFIG.value)  # every field, before anything is built or written
    workdir = paths.check_workdir(_WORKDIR.value) if _WORKDIR.value else None
  except UserError as e:
    _fail(str(e), 2)
  if _CHECK.value:
    print(f'config ok: {_config_arg(sys.argv)} (checks against the devices run when the run starts)')
    return
  progress.note(f'starting the run in {workdir} (importing flax, orbax and the input pipeline)')
  from ssl_jax import train  # imported late so that flag errors are instant
  try:
    results = train.train_and_evaluate(_CONFIG.value, workdir)
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
  hide_closed_event_loop_errors()
  app.run(main, flags_parser=_parse_flags)
