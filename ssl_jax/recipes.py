"""Recipes by file name, and field overrides given as text: what the command-line tools share.

A recipe is 'path/to/recipe.py[:ARG]', a Python file whose `get_config(ARG)` returns the run's ConfigDict
(configs/). An override is 'a.b=VALUE', read the way `--config.a.b=VALUE` flags are: as the type of the
field it replaces (bools from true/false/1/0/yes/no, tuples and lists as Python literals).
"""
import ast
import importlib.util
import pathlib
import sys

from ssl_jax.errors import UserError

_REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def load(spec: str):
  """The ConfigDict of recipe `spec`, 'path/to/recipe.py[:ARG]' (its `get_config(ARG)`).

  Args:
    spec: the recipe file, optionally followed by ':' and its argument string.

  Returns:
    The recipe's ConfigDict.
  """
  path, _, arg = spec.partition(':')
  if not pathlib.Path(path).is_file():
    raise UserError(f'recipe {path} is not a file; pass one such as configs/simclr_digits.py[:ARG]')
  if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))  # recipes import `configs.common`
  module_spec = importlib.util.spec_from_file_location(f'recipe_{pathlib.Path(path).stem}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    return module.get_config(arg or None)
  except ValueError as e:
    raise UserError(f'recipe {spec}: {e}') from None


def _parse(key: str, current, text: str):
  """`text` as a value of the type of `current`."""
  try:
    if isinstance(current, bool):
      if text.lower() not in ('true', 'false', '1', '0', 'yes', 'no'):
        raise ValueError
      return text.lower() in ('true', '1', 'yes')
    if isinstance(current, (int, float)):
      return type(current)(text)
    if isinstance(current, str):
      return text
    value = ast.literal_eval(text)
    return tuple(value) if isinstance(current, tuple) and isinstance(value, list) else value
  except (ValueError, SyntaxError):
    if current is None:
      return text
    raise UserError(f'{key}={text!r} is not a valid {type(current).__name__}') from None


def override(config, assignment: str) -> None:
  """Sets one field of `config` from 'a.b=VALUE' (in place); the field must exist.

  Args:
    config: a ConfigDict.
    assignment: 'dotted.key=VALUE'.
  """
  key, sep, text = assignment.partition('=')
  key = key.strip()
  if not sep or not key:
    raise UserError(f'{assignment!r} is not KEY=VALUE; e.g. rotation.enabled=True')
  *parents, last = key.split('.')
  node = config
  for part in parents + [last]:
    if not hasattr(node, 'keys') or part not in node:
      raise UserError(f'the config has no field {key!r}; check the name against the recipe (overrides only '
                      'change existing fields)')
    if part != last:
      node = node[part]
  if hasattr(node[last], 'keys'):
    raise UserError(f'{key!r} is a block of fields; set its fields one by one (e.g. {key}.FIELD=VALUE)')
  node[last] = _parse(key, node[last], text)


PAIR = ('baseline', 'candidate')


def add_pair_arguments(parser) -> None:
  """--baseline and --candidate recipes with their overrides: --set (both), --baseline_set, --candidate_set."""
  parser.add_argument('--baseline', required=True, help='recipe configs/A.py[:ARG]')
  parser.add_argument('--candidate', required=True, help='recipe configs/B.py[:ARG]')
  for flag, whom in (('--set', 'both'), ('--baseline_set', 'the baseline'), ('--candidate_set', 'the candidate')):
    parser.add_argument(flag, action='extend', nargs='+', default=[], metavar='KEY=VALUE',
                        help=f'config overrides for {whom}')


def load_pair(args) -> tuple[dict, dict]:
  """The two recipes of `add_pair_arguments`' parsed `args` with their overrides applied.

  Returns:
    ({'baseline': ConfigDict, 'candidate': ConfigDict}, {the same names: the recipe and its overrides as text}).
  """
  configs, specs = {}, {}
  for name in PAIR:
    assignments = [*args.set, *getattr(args, f'{name}_set')]
    config = load(getattr(args, name))
    for assignment in assignments:
      override(config, assignment)
    configs[name], specs[name] = config, ' '.join([getattr(args, name), *assignments])
  return configs, specs
