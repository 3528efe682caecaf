"""`llava-interleave plot RUN_DIR`: loss and learning-rate curves of a run, from its JSONL log, to PNG."""

from __future__ import annotations

from pathlib import Path

from ..errors import InterleaveError
from .runlog import LOG_FILE, read_log


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(run_dir)
    if not records:
        raise InterleaveError(f"{Path(run_dir) / LOG_FILE} has no steps to plot")
    steps = [r["step"] for r in records]
    metrics = [("loss", "loss")] + [(k, k) for k in ("reward_accuracy", "margin") if k in records[-1]]
    fig, axes = plt.subplots(len(metrics) + 1, 1, figsize=(7, 2.6 * (len(metrics) + 1)), sharex=True)
    for ax, (key, label) in zip(axes, metrics):
        ax.plot(steps, [r.get(key, float("nan")) for r in records], color="tab:blue")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].plot(steps, [r["lr"] for r in records], color="tab:orange")
    axes[-1].set_ylabel("learning rate")
    axes[-1].set_xlabel("step")
    axes[-1].grid(alpha=0.3)
    fig.suptitle(Path(run_dir).resolve().name)
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
