# Sourced by the launch scripts: makes sure .venv exists and matches requirements.txt, then activates it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
STAMP=.venv/.requirements.sha256
WANT="$(sha256sum requirements.txt | cut -d' ' -f1)"
# Some machines' pip configs name local mirrors that may be absent; their warnings are noise here.
quiet() { { "$@" 2>&1; } | { grep -v 'is ignored: it is neither' || true; }; }
if [[ ! -x .venv/bin/python || ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
  echo "Creating .venv from requirements.txt (about a minute)..." >&2
  "$PYTHON" -m venv .venv
  quiet .venv/bin/python -m pip install -q --upgrade pip
  quiet .venv/bin/python -m pip install -q -r requirements.txt
  echo "$WANT" > "$STAMP"
fi
# ssl_jax itself, editable (pyproject.toml; its dependencies are the pinned ones above): `import ssl_jax` and
# recipes by name work from any directory. Redone when the checkout moves.
if [[ "$(cat .venv/.editable 2>/dev/null)" != "$ROOT" ]]; then
  quiet .venv/bin/python -m pip install -q --no-deps -e .
  echo "$ROOT" > .venv/.editable
fi
source .venv/bin/activate
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}" TF_ENABLE_ONEDNN_OPTS=0
