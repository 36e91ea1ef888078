#!/usr/bin/env bash
# The default job: SimCLR on the embedded digits on CPU, then kNN and linear-probe top-1 of the learned encoder
# against its random initialisation. Extra arguments are passed to the trainer (e.g. --config.total_steps=50).
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
WORKDIR="${WORKDIR:-runs/quickstart}"
start=$(date +%s)
python -m ssl_jax.main --config configs/simclr_digits.py --workdir "$WORKDIR" "$@"
python - "$WORKDIR" <<'PY'
import json, sys
r = json.load(open(f'{sys.argv[1]}/results.json'))
print(f"\n{'':22}{'kNN top-1':>10}{'linear top-1':>14}")
print(f"{'pretrained (SimCLR)':22}{r['knn_top1']:>10.1%}{r['linear_top1']:>14.1%}")
print(f"{'random initialisation':22}{r['random_init_knn_top1']:>10.1%}{r['random_init_linear_top1']:>14.1%}")
print(f"training {r['train_time_s']:.0f} s; results.json and curves.png in {sys.argv[1]}")
PY
python -m ssl_jax.report "$WORKDIR" > /dev/null  # report_curves.png and report.md beside curves.png
echo "quickstart total: $(( $(date +%s) - start )) s"
