#!/usr/bin/env bash
# The whole test suite on 8 fake CPU devices (tests/conftest.py), with JAX's persistent compilation cache.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
# Two workers, one test file each at a time (files share compiled steps through module fixtures).
python -m pytest tests -q -n 2 --dist loadfile "$@"
