#!/usr/bin/env bash
# The accelerator table in one command (README "Performance"): python -m ssl_jax.accelerator on whatever
# accelerator JAX sees, one process tree, under 8 minutes; the table is printed and written to DIR.
#
# Usage: launch/accelerator_bench.sh DIR [--peak_tflops F] [--budget_s 420] [--steps 10] [--tiny]
#
# On a bare machine that has JAX (0.10 or 0.11), flax, optax, orbax, chex, matplotlib and PyTorch but no
# TensorFlow, tfds or ml-collections, and no network: ssl_jax imports and builds its steps without TensorFlow
# (only the tfds input pipeline imports it; the table uses synthetic and in-memory data). Bring the one
# missing package as a wheel, made beforehand on a machine with pip and a network, in the checkout's root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl ml-collections==1.1.0
# (pure Python, 77 kB; its own needs, absl-py and PyYAML, are on such machines). Copy the checkout with its
# .whl folder to the machine (when a tool copies only tracked files, name .whl among the paths it carries),
# then run there, from anywhere:
#   launch/accelerator_bench.sh OUT_DIR
# This script installs .whl/*.whl, when the folder is there, into a scratch directory put on PYTHONPATH
# (never into the system's packages) and runs the table with the checkout on PYTHONPATH (no install of
# ssl_jax needed). PYTHON=... picks the interpreter (default python3). MFU is against the device's bf16 dense
# peak, looked up by device kind (H200 and H100 SXM: 989 TFLOP/s) or given with --peak_tflops.
set -euo pipefail

if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
  sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'
  exit $(( $# < 1 ? 2 : 0 ))
fi
out="$1"
shift
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"

if [[ -d "$root/.whl" ]] && compgen -G "$root/.whl/*.whl" > /dev/null; then
  site="$(mktemp -d)/site"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$root"/.whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$python" -m ssl_jax.accelerator --out "$out" "$@"
