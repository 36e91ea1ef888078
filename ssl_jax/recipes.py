"""Recipes by file or by name, and field overrides given as text: what the command-line tools share.

A recipe is 'path/to/recipe.py[:ARG]', a Python file whose `get_config(ARG)` returns the run's ConfigDict, or
'NAME[:ARG]', one of the recipes shipped with ssl_jax (the checkout's configs/ folder; an installed wheel holds
a copy of it as ssl_jax/_recipes/configs, so no generic top-level `configs` lands in site-packages). Recipes
import `configs.common`, so the folder holding that `configs` package goes first on sys.path when one is loaded.
An override is 'a.b=VALUE', read the way `--config.a.b=VALUE` flags are: as the type of the field it replaces
(bools from true/false/1/0/yes/no, tuples and lists as Python literals).
"""
import ast
import importlib.util
import pathlib
import sys

from ssl_jax.errors import UserError



def _recipes_parent() -> pathlib.Path:
  """The folder holding the `configs` package: inside the installed package, else the checkout's root."""
  package = pathlib.Path(__file__).resolve().parent
  installed = package / '_recipes'
  return installed if (installed / 'configs').is_dir() else package.parent


RECIPES_PARENT = _recipes_parent()
_NOT_RECIPES = ('__init__', 'common')


def names() -> list[str]:
  """The names of the shipped recipes."""
  return sorted(p.stem for p in (RECIPES_PARENT / 'configs').glob('*.py') if p.stem not in _NOT_RECIPES)


def make_importable() -> None:
  """Puts the recipes' `configs` package first on sys.path (recipes import `configs.common`)."""
  if str(RECIPES_PARENT) not in sys.path:
    sys.path.insert(0, str(RECIPES_PARENT))


def resolve(spec: str) -> str:
  """'path/to/recipe.py[:ARG]' of a recipe given by file or by name.

  A file that exists is used as it is. Otherwise 'NAME', 'NAME.py' or 'configs/NAME.py' names a shipped recipe,
  so the documented `--config configs/NAME.py` also works from any directory once ssl_jax is installed.

  Args:
    spec: a recipe file or name, optionally followed by ':' and its argument string.

  Returns:
    The recipe file's path (user directory expanded) and the ':ARG' suffix, if any; `spec` itself when it is
    neither a file nor a shipped recipe (the caller reports it: `check_file`).
  """
  path, sep, arg = spec.partition(':')
  if pathlib.Path(path).expanduser().is_file():
    return str(pathlib.Path(path).expanduser()) + sep + arg
  given = pathlib.PurePath(path)
  shipped = RECIPES_PARENT / 'configs' / f'{given.stem}.py'
  if (given.parent in (pathlib.PurePath('.'), pathlib.PurePath('configs')) and given.suffix in ('', '.py')
      and given.stem not in _NOT_RECIPES and shipped.is_file()):
    return str(shipped) + sep + arg
  return spec


def check_file(path: str) -> None:
  """Raises UserError when the (resolved) recipe `path` is not a file."""
  if not pathlib.Path(path).is_file():
    raise UserError(f'recipe {path} is neither a file nor a recipe name; pass a file such as '
                    f'configs/simclr_digits.py[:ARG] or one of: {", ".join(names())}')


def resolve_flag(argv: list[str], name: str = 'config') -> list[str]:
  """`argv` with the value of `--NAME` (a recipe given by file or by name) replaced by its file (`resolve`).

  For a flag that loads the file itself (ml_collections' config_flags): this also makes `configs` importable.
  """
  make_importable()
  argv = list(argv)
  for i, arg in enumerate(argv):
    if arg in (f'--{name}', f'-{name}') and i + 1 < len(argv):
      argv[i + 1] = resolve(argv[i + 1])
    elif arg.startswith((f'--{name}=', f'-{name}=')):
      flag, _, spec = arg.partition('=')
      argv[i] = f'{flag}={resolve(spec)}'
  return argv


def load(spec: str):
  """The ConfigDict of recipe `spec`, 'path/to/recipe.py[:ARG]' or 'NAME[:ARG]' (its `get_config(ARG)`).

  Args:
    spec: the recipe file or name (`resolve`), optionally followed by ':' and its argument string.

  Returns:
    The recipe's ConfigDict.
  """
  path, _, arg = resolve(spec).partition(':')
  check_file(path)
  make_importable()
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


def split_overrides(flags: list[str], names=('config',)) -> dict[str, list[str]]:
  """Sorts `--NAME.a.b=VALUE` flags by recipe NAME: {NAME: ['a.b=VALUE', ...]} for every name in `names`.

  The command-line tools' one override dialect (`--config.a.b=VALUE`, as `python -m ssl_jax.main` reads it;
  `--baseline.a.b=VALUE` for a second recipe). Any other flag is a UserError.
  """
  out = {name: [] for name in names}
  for flag in flags:
    prefix, dot, assignment = flag.removeprefix('--').partition('.')
    if not flag.startswith('--') or not dot or prefix not in out or '=' not in assignment:
      dialect = ' or '.join(f'--{name}.KEY=VALUE' for name in names)
      raise UserError(f'unknown argument {flag!r}; recipe fields are set as {dialect}')
    out[prefix].append(assignment)
  return out


def load_with(spec: str, assignments: list[str]):
  """The ConfigDict of recipe `spec` (`load`) with the 'a.b=VALUE' `assignments` applied (`override`)."""
  config = load(spec)
  for assignment in assignments:
    override(config, assignment)
  return config
