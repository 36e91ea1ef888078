#!/usr/bin/env bash
# The whole test suite on 8 fake CPU devices (tests/conftest.py), with JAX's persistent compilation cache.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
# tests/test_export.py loads exported encoders into PyTorch and reads them with safetensors' own reader; neither
# is a dependency of ssl_jax. The CPU build of torch: the extra index holds it (PyPI's Linux torch is CUDA's).
if ! python -c 'import torch, safetensors' 2>/dev/null; then
  echo "Installing torch==2.13.0 (CPU) and safetensors into .venv for tests/test_export.py..." >&2
  quiet python -m pip install -q torch==2.13.0 safetensors --extra-index-url https://download.pytorch.org/whl/cpu
fi
# Two workers, one test file each at a time (files share compiled steps through module fixtures).
python -m pytest tests -q -n 2 --dist loadfile "$@"
