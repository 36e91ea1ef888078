#!/usr/bin/env bash
# Trains on every GPU of this host, or on several hosts with one process per host (jax.distributed).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/gpu.sh [launcher options] --config configs/NAME.py[:ARG] --workdir DIR [--config.a.b=VALUE ...]

Runs `python -m ssl_jax.main` with the arguments that are not launcher options, in .venv (created from
requirements.txt if missing; jax's CUDA wheels are added when jax sees no GPU). One process drives every GPU
of the host; the global batch is split over all of them.

Launcher options:
  --coordinator HOST:PORT  multi-node: the address of process 0, the same on every node; needs the two below
  --num_processes N        multi-node: number of nodes (one process each)
  --process_id I           multi-node: this node's number, 0 .. N-1 (0 runs on the coordinator's host)
  --gpus LIST              only these GPUs (CUDA_VISIBLE_DEVICES, e.g. 0,1)
  --log FILE               run in the background (nohup) writing FILE; prints how to follow and stop it
  -h, --help               this text

Environment:
  DRY_RUN=1      print the commands instead of running them
  CUDA_EXTRA     the jax extra to install when jax sees no GPU (default cuda12)
  TFDS_DATA_DIR  where tfds datasets are (default ~/tensorflow_datasets)

Examples:
  launch/gpu.sh --config configs/simclr_cifar10.py --workdir runs/simclr_cifar10
  # two nodes: run on each, with --process_id 0 on node-a and 1 on node-b
  launch/gpu.sh --coordinator node-a:8476 --num_processes 2 --process_id 0 \
      --config configs/simclr_cifar10.py --workdir /shared/runs/simclr_cifar10
It runs in the repository root: a relative --workdir is taken from there.
A shared --workdir (NFS, a mounted bucket) is needed with several nodes: all of them write the checkpoints.
SIGTERM (kill PID) saves a checkpoint at the next step and exits with code 143; the same command resumes.
EOF
}

fail() { echo "error: $1" >&2; exit 2; }

# Prints a command shell-quoted (DRY_RUN=1) or runs it.
run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

coordinator="" num_processes="" process_id="" gpus="" log=""
args=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --coordinator|--num_processes|--process_id|--gpus|--log)
      (($# >= 2)) || fail "$1 needs a value (see -h)"
      declare "${1#--}=$2"; shift 2 ;;
    --coordinator=*|--num_processes=*|--process_id=*|--gpus=*|--log=*)
      name="${1%%=*}"; declare "${name#--}=${1#*=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
((${#args[@]})) || { usage >&2; fail "no trainer arguments; give at least --config and --workdir"; }

env_vars=(TF_CPP_MIN_LOG_LEVEL=1 TF_ENABLE_ONEDNN_OPTS=0)
if [[ -n "$coordinator$num_processes$process_id" ]]; then
  [[ -n "$coordinator" && -n "$num_processes" && -n "$process_id" ]] ||
    fail "multi-node needs all of --coordinator, --num_processes and --process_id"
  [[ "$coordinator" =~ ^[^:]+:[0-9]+$ ]] ||
    fail "--coordinator=$coordinator is not HOST:PORT, e.g. node-a:8476"
  [[ "$num_processes" =~ ^[1-9][0-9]*$ ]] || fail "--num_processes=$num_processes is not a positive integer"
  [[ "$process_id" =~ ^(0|[1-9][0-9]*)$ ]] && ((process_id < num_processes)) ||
    fail "--process_id=$process_id is not in 0..$((num_processes - 1))"
  # Read by ssl_jax.sharding, which passes them to jax.distributed.initialize().
  env_vars+=(SSL_JAX_DISTRIBUTED=1 "JAX_COORDINATOR_ADDRESS=$coordinator" "JAX_NUM_PROCESSES=$num_processes"
             "JAX_PROCESS_ID=$process_id")
fi
[[ -z "$gpus" ]] || env_vars+=("CUDA_VISIBLE_DEVICES=$gpus")

[[ -z "$log" || "$log" == /* ]] || log="$PWD/$log"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
config=""
for ((i = 0; i < ${#args[@]}; i++)); do
  [[ "${args[i]}" != --config=* ]] || config="${args[i]#--config=}"
  [[ "${args[i]}" != --config ]] || config="${args[i + 1]:-}"
done
# Before the environment is built and CUDA wheels are fetched: a mistyped recipe fails in a second.
[[ -z "$config" || -f "${config%%:*}" ]] ||
  fail "config file ${config%%:*} does not exist in $ROOT; pass a recipe of configs/, e.g. configs/simclr_cifar10.py"
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  echo "source launch/_venv.sh"
else
  source launch/_venv.sh
fi
# Every config field, before CUDA wheels are fetched (the trainer checks them again).
[[ "${DRY_RUN:-0}" == 1 ]] || python -m ssl_jax.main --check "${args[@]}" > /dev/null || exit 2
jax_version="$(sed -n 's/^jax==//p' requirements.txt)"
if [[ "${DRY_RUN:-0}" == 1 ]] || ! python -c "import jax; jax.devices('gpu')" >/dev/null 2>&1; then
  echo "# when jax sees no GPU:"
  run python -m pip install -q "jax[${CUDA_EXTRA:-cuda12}]==$jax_version"
  [[ "${DRY_RUN:-0}" == 1 ]] || python -c "import jax; jax.devices('gpu')" > /dev/null 2>&1 ||
    fail "jax sees no GPU even with jax[${CUDA_EXTRA:-cuda12}]; check nvidia-smi and the CUDA driver"
fi

train=(env "${env_vars[@]}" python -m ssl_jax.main "${args[@]}")
if [[ -z "$log" ]]; then
  [[ "${DRY_RUN:-0}" == 1 ]] || exec "${train[@]}"  # exec: a SIGTERM sent to this script reaches the trainer
  run "${train[@]}"
  exit 0
fi
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  echo "nohup $(printf '%q ' "${train[@]}")> $log 2>&1 &"
  pid='PID'
else
  mkdir -p "$(dirname "$log")"
  nohup "${train[@]}" > "$log" 2>&1 &
  pid=$!
  echo "$pid" > "$log.pid"
fi
echo "started process $pid, log $log"
echo "follow:  tail -f $log"
echo "stop:    kill $pid   (saves a checkpoint at the next step; the same command resumes)"
