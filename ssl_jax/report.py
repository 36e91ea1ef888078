"""Run reports: metrics.jsonl -> PNG curves."""
import json
import pathlib

import matplotlib

matplotlib.use('Agg')  # files only; no display on training machines
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(workdir) -> list[dict]:
  path = pathlib.Path(workdir) / 'metrics.jsonl'
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plot_metrics(workdir, keys=('loss', 'lr', 'probe_top1', 'knn_top1')) -> pathlib.Path:
  """Writes `<workdir>/curves.png`: one panel per metric in `keys` that the run logged, against step."""
  records = read_metrics(workdir)
  present = [k for k in keys if any(k in r for r in records)]
  fig, axes = plt.subplots(1, max(len(present), 1), figsize=(4.5 * max(len(present), 1), 3.2), squeeze=False)
  for ax, key in zip(axes[0], present):
    points = [(r['step'], r[key]) for r in records if key in r]
    ax.plot(*zip(*points), marker='.' if len(points) < 30 else None)
    ax.set_xlabel('step')
    ax.set_title(key)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  out = pathlib.Path(workdir) / 'curves.png'
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out
