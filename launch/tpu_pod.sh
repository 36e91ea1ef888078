#!/usr/bin/env bash
# Trains on a Cloud TPU VM slice: every worker runs the same command; jax.distributed joins them.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh [launcher options] --config configs/NAME.py[:ARG] [--config.a.b=VALUE ...]

Creates the TPU VM slice unless it exists, copies this repository to every worker, installs the requirements
(Python 3.11 venv, jax[tpu]) and Cloud Storage FUSE, mounts the bucket, and starts
`python -m ssl_jax.main` on all workers in the background (jax.distributed.initialize() finds the others).
Data: TFDS_DATA_DIR (default gs://BUCKET/tensorflow_datasets, read directly by tfds). Workdir:
gs://BUCKET/runs/RUN_NAME, mounted on every worker at ~/bucket/runs/RUN_NAME. Running the same command again
reuses the slice and resumes the run from its newest checkpoint.

Launcher options (or the environment variables in capitals):
  --tpu NAME           TPU_NAME          the TPU VM's name (required)
  --zone ZONE          ZONE              e.g. us-central2-b (required)
  --bucket gs://B      BUCKET            bucket for the workdir and, by default, the data (required)
  --project P          PROJECT           default: gcloud's configured project
  --accelerator T      ACCELERATOR_TYPE  default v4-32 (used only to create the slice)
  --runtime V          RUNTIME_VERSION   default from the accelerator: tpu-ubuntu2204-base (v4),
                                         v2-alpha-tpuv5-lite (v5litepod), v2-alpha-tpuv5 (v5p),
                                         v2-alpha-tpuv6e (v6e)
  --run NAME           RUN_NAME          default: the recipe's file name and argument
  --spot               SPOT=1            create a Spot slice
  -h, --help                             this text
Environment: DRY_RUN=1 prints the commands instead of running them; TFDS_DATA_DIR as above.

Example:
  launch/tpu_pod.sh --tpu ssl-v4 --zone us-central2-b --bucket gs://my-bucket \
      --config configs/simclr_cifar10.py --config.batch_size=1024
EOF
}

fail() { echo "error: $1" >&2; exit 2; }

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

TPU_NAME="${TPU_NAME:-}" ZONE="${ZONE:-}" BUCKET="${BUCKET:-}" PROJECT="${PROJECT:-}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}" RUNTIME_VERSION="${RUNTIME_VERSION:-}" RUN_NAME="${RUN_NAME:-}"
SPOT="${SPOT:-0}"
args=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --spot) SPOT=1; shift ;;
    --tpu|--zone|--bucket|--project|--accelerator|--runtime|--run)
      (($# >= 2)) || fail "$1 needs a value (see -h)"
      case "$1" in
        --tpu) TPU_NAME="$2" ;; --zone) ZONE="$2" ;; --bucket) BUCKET="$2" ;; --project) PROJECT="$2" ;;
        --accelerator) ACCELERATOR_TYPE="$2" ;; --runtime) RUNTIME_VERSION="$2" ;; --run) RUN_NAME="$2" ;;
      esac
      shift 2 ;;
    --workdir|--workdir=*) fail "the workdir is gs://BUCKET/runs/RUN_NAME; choose it with --run NAME" ;;
    *) args+=("$1"); shift ;;
  esac
done

[[ -n "$TPU_NAME" ]] || fail "no TPU name: pass --tpu NAME or set TPU_NAME"
[[ -n "$ZONE" ]] || fail "no zone: pass --zone ZONE (e.g. us-central2-b) or set ZONE"
[[ "$BUCKET" =~ ^gs://[a-z0-9][-a-z0-9_.]*[a-z0-9]/?$ ]] ||
  fail "--bucket must be gs://BUCKET_NAME, got '$BUCKET'"
BUCKET="${BUCKET%/}"
config=""
for a in "${args[@]}"; do
  [[ "$a" == --config=* ]] && config="${a#--config=}"
done
for ((i = 0; i + 1 < ${#args[@]}; i++)); do
  [[ "${args[i]}" == --config ]] && config="${args[i + 1]}"
done
[[ -n "$config" ]] || fail "no recipe: pass --config configs/NAME.py[:ARG]"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The workers run the recipe from the repository root: check it here, before a slice is created.
[[ -f "$ROOT/${config%%:*}" ]] ||
  fail "config file ${config%%:*} does not exist in $ROOT; pass a recipe of configs/, e.g. configs/simclr_cifar10.py"
if [[ -x "$ROOT/.venv/bin/python" ]]; then  # recipe arguments and every --config field, when a local env exists
  (cd "$ROOT" && .venv/bin/python -m ssl_jax.main --check "${args[@]}" > /dev/null) || exit 2
else
  echo "note: no $ROOT/.venv, so the config fields are checked only on the workers" >&2
fi
if [[ -z "$RUN_NAME" ]]; then
  RUN_NAME="$(basename "${config%%:*}" .py)"
  [[ "$config" != *:* ]] || RUN_NAME+="_${config#*:}"
  RUN_NAME="${RUN_NAME//[^A-Za-z0-9_.=-]/_}"
fi
if [[ -z "$RUNTIME_VERSION" ]]; then
  case "$ACCELERATOR_TYPE" in
    v4-*) RUNTIME_VERSION=tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) RUNTIME_VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) RUNTIME_VERSION=v2-alpha-tpuv5 ;;
    v6e-*) RUNTIME_VERSION=v2-alpha-tpuv6e ;;
    *) fail "no default runtime for $ACCELERATOR_TYPE; pass --runtime VERSION" ;;
  esac
fi

where=(--zone="$ZONE")
[[ -z "$PROJECT" ]] || where+=(--project="$PROJECT")
tpu=(gcloud compute tpus tpu-vm)
data_dir="${TFDS_DATA_DIR:-$BUCKET/tensorflow_datasets}"
jax_version="$(sed -n 's/^jax==//p' "$ROOT/requirements.txt")"

# 1. The slice: reused when it exists.
create=("${tpu[@]}" create "$TPU_NAME" "${where[@]}" --accelerator-type="$ACCELERATOR_TYPE"
        --version="$RUNTIME_VERSION")
[[ "$SPOT" != 1 ]] || create+=(--spot)
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  run "${tpu[@]}" describe "$TPU_NAME" "${where[@]}"
  echo "# only if describe fails:"
  run "${create[@]}"
elif ! "${tpu[@]}" describe "$TPU_NAME" "${where[@]}" > /dev/null 2>&1; then
  echo "Creating $ACCELERATOR_TYPE slice $TPU_NAME in $ZONE..." >&2
  "${create[@]}"
fi

# 2. The code, on every worker.
archive="$(mktemp -u /tmp/ssl_jax_code.XXXXXX).tar.gz"
run tar czf "$archive" -C "$ROOT" --exclude=./.venv --exclude=./runs --exclude=./.jax_cache --exclude=./.git \
  --exclude=__pycache__ .
run "${tpu[@]}" scp "$archive" "$TPU_NAME":ssl_jax_code.tar.gz --worker=all "${where[@]}"

# 3. Requirements and the bucket mount, on every worker (each step is skipped when already done).
keyring=/usr/share/keyrings/cloud.google.asc
setup="set -euo pipefail
mkdir -p ~/ssl_jax && tar xzf ~/ssl_jax_code.tar.gz -C ~/ssl_jax
if ! command -v python3.11 > /dev/null; then
  sudo apt-get -qq update && sudo apt-get -qq install -y python3.11 python3.11-venv
fi
cd ~/ssl_jax
PYTHON=python3.11 bash -c 'source launch/_venv.sh && python -m pip install -q \"jax[tpu]==$jax_version\"'
if ! command -v gcsfuse > /dev/null; then
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee $keyring > /dev/null
  echo \"deb [signed-by=$keyring] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" |
    sudo tee /etc/apt/sources.list.d/gcsfuse.list > /dev/null
  sudo apt-get -qq update && sudo apt-get -qq install -y gcsfuse
fi
mkdir -p ~/bucket && { mountpoint -q ~/bucket || gcsfuse --implicit-dirs ${BUCKET#gs://} ~/bucket; }
mkdir -p ~/bucket/runs/$RUN_NAME"
run "${tpu[@]}" ssh "$TPU_NAME" --worker=all "${where[@]}" --command="$setup"

# 4. The same training command on every worker, in the background, one log per worker.
log="~/ssl_jax/logs/$RUN_NAME.log"
# Only the trainer goes to the background, so that the saved PID is its own (nohup execs it).
start="cd ~/ssl_jax && mkdir -p logs || exit 1
SSL_JAX_DISTRIBUTED=1 TFDS_DATA_DIR=$(printf '%q' "$data_dir") TF_CPP_MIN_LOG_LEVEL=1 \
nohup .venv/bin/python -m ssl_jax.main --workdir ~/bucket/runs/$RUN_NAME $(printf '%q ' "${args[@]}")\
> $log 2>&1 < /dev/null &
echo \$! > ~/ssl_jax/logs/$RUN_NAME.pid"
run "${tpu[@]}" ssh "$TPU_NAME" --worker=all "${where[@]}" --command="$start"
[[ "${DRY_RUN:-0}" == 1 ]] || rm -f "$archive"

ssh_cmd="${tpu[*]} ssh $TPU_NAME ${where[*]}"
cat <<EOF
Started $RUN_NAME on every worker of $TPU_NAME; workdir $BUCKET/runs/$RUN_NAME.
Follow worker 0's log:
  $ssh_cmd --worker=0 --command='tail -f $log'
Metrics: gcloud storage cat $BUCKET/runs/$RUN_NAME/metrics.jsonl | tail -3
  (or tensorboard --logdir $BUCKET/runs/$RUN_NAME/tensorboard)
Stop (SIGTERM: a checkpoint is saved; this launch command resumes):
  $ssh_cmd --worker=all --command='kill \$(cat ~/ssl_jax/logs/$RUN_NAME.pid)'
Delete the slice when done (the bucket keeps the run):
  ${tpu[*]} delete $TPU_NAME ${where[*]} --quiet
EOF
