"""XLA settings ssl_jax applies when SSL_JAX_XLA_DEFAULTS=1, before JAX starts its backend (`import ssl_jax`
calls `apply`). Opt-in: with them, programs that must agree (one device vs eight, a framework alone vs the same
framework with a zero-weight add-on) differed by up to 1% in the parameters after two steps, where jaxlib's
defaults agree within 1e-4 (tests/test_frameworks.py, tests/test_fusion.py), so they are not the default.

On the CPU, this jaxlib hands some work (dots, reductions) to YNNPACK. With that off
(`--xla_cpu_experimental_ynn_fusion_type=`, an empty list of YNNPACK fusion types) the SimCLR ResNet-18 step
(batch 32) ran in 0.51x-0.57x the time with 0.61x the memory on the 2-core CPU, the loss within 4e-5
(relative) after 8 steps, and the quickstart step in 0.78x; the commands are in README "Performance". An
unknown XLA flag aborts the process, so a flag is added only when this jaxlib's library names it, never over
a value the user already put in XLA_FLAGS. It reaches only backends that start after the import (XLA reads XLA_FLAGS once).
"""
import importlib.util
import mmap
import os
import pathlib

CPU_FLAGS = {'xla_cpu_experimental_ynn_fusion_type': ''}


def _known_to_jaxlib(names) -> set:
  """The flag names that appear in jaxlib's largest shared library (where XLA's flag table lives)."""
  spec = importlib.util.find_spec('jaxlib')
  libraries = sorted(pathlib.Path(spec.origin).parent.glob('*.so'), key=lambda p: p.stat().st_size) if spec else []
  if not libraries:
    return set()
  with open(libraries[-1], 'rb') as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
    return {name for name in names if data.find(name.encode()) >= 0}


def apply() -> None:
  """Adds CPU_FLAGS that jaxlib knows and XLA_FLAGS does not set yet to XLA_FLAGS."""
  if os.environ.get('SSL_JAX_XLA_DEFAULTS') != '1':
    return
  current = os.environ.get('XLA_FLAGS', '')
  missing = [name for name in CPU_FLAGS if f'--{name}' not in current]
  known = _known_to_jaxlib(missing) if missing else set()
  added = [f'--{name}={CPU_FLAGS[name]}' for name in missing if name in known]
  if added:
    os.environ['XLA_FLAGS'] = ' '.join([current, *added]).strip()
