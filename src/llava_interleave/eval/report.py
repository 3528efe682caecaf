"""The report of an evaluation run: markdown tables, a JSON file and a bar chart, next to the paper's numbers.

Every report states what shaped the numbers (protocol, model, template, layout, frames, pooling, new-token
cap), because the same weights score very differently under the two protocols. The paper's numbers exist
only for a few bench categories (the 7B before and after video DPO, paper protocol, x100); every other
row shows "—" there.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .categories import PAPER_MODELS, PAPER_NUMBERS
from .scoring import Scores

NONE = "—"


@dataclass(frozen=True, kw_only=True)
class RunInfo:
    """What a run was: the settings that shape its answers, and how it was carried out."""

    bench: str
    model: str
    template: str
    layout: str
    frames: int
    video_pooling: str
    max_new_tokens: int
    protocol: str
    split: str
    items: int
    batch_size: int = 1
    processes: int = 1

    def answer_settings(self) -> dict[str, Any]:
        """The fields two runs must share for their predictions to belong in one file."""
        keys = ("bench", "model", "template", "layout", "frames", "video_pooling", "max_new_tokens", "split")
        return {k: getattr(self, k) for k in keys}


def _fmt(value: float, protocol: str) -> str:
    return f"{value:.2f}" if protocol == "paper" else f"{value:.4f}"


def _paper(category: str) -> list[str]:
    numbers = PAPER_NUMBERS.get(category)
    return [f"{v:.1f}" for v in numbers] if numbers else [NONE] * len(PAPER_MODELS)


def markdown(scores: Scores, info: RunInfo) -> str:
    """The report as markdown: settings, then splits, categories (with the paper's numbers) and datasets."""
    p = scores.protocol
    scale = "x100" if p == "paper" else "0..1"
    lines = ["# LLaVA-Interleave Bench report", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k.replace('_', ' ')} | {v if v != '' else NONE} |" for k, v in asdict(info).items()]
    lines += [f"| failed answers (score 0) | {scores.errors} |", "",
              f"Overall ({p} protocol, {scale}, mean of the splits): **{_fmt(scores.overall, p)}**", "",
              "| split | score |", "|---|---|"]
    lines += [f"| {s} | {_fmt(v, p)} |" for s, v in scores.splits.items()]
    paper_heads = " | ".join(f"paper {m}" for m in PAPER_MODELS)
    lines += ["", f"| split | category | score | {paper_heads} |", "|---|---|---|" + "---|" * len(PAPER_MODELS)]
    lines += [f"| {scores.category_split[c]} | {c} | {_fmt(v, p)} | {' | '.join(_paper(c))} |"
              for c, v in sorted(scores.categories.items(), key=lambda kv: (scores.category_split[kv[0]], kv[0]))]
    lines += ["", "| dataset | samples | score |", "|---|---|---|"]
    lines += [f"| {d} | {scores.samples[d]} | {_fmt(v, p)} |" for d, v in scores.datasets.items()]
    lines += ["", "Paper numbers: the released 7B before / after video DPO, paper protocol (x100); "
              "they are comparable only to a paper-protocol run of those weights."]
    return "\n".join(lines) + "\n"


def plot(scores: Scores, info: RunInfo, path: Path) -> Path:
    """A horizontal bar per category (and the overall score), with the paper's 7B where it exists."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*scores.categories, "overall"]
    values = [*scores.categories.values(), scores.overall]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.35 * len(names)))
    ax.barh(names, values, color=["tab:blue"] * (len(names) - 1) + ["tab:orange"], label="this run")
    if scores.protocol == "paper":
        marks = [(k, PAPER_NUMBERS[n][0]) for k, n in enumerate(names) if n in PAPER_NUMBERS]
        if marks:
            ax.scatter([v for _, v in marks], [k for k, _ in marks], color="black", marker="|", s=200, label="paper 7B")
    ax.invert_yaxis()
    ax.set_xlim(0, 100 if scores.protocol == "paper" else 1)
    ax.set_xlabel(f"score ({scores.protocol} protocol, {'x100' if scores.protocol == 'paper' else '0..1'})")
    ax.set_title(f"{Path(info.model).name}: {info.frames} frames, pooling {info.video_pooling}", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(out_dir: Path, scores: Scores, info: RunInfo) -> tuple[Path, Path, Path]:
    """RUN_DIR/report.md, report.json and scores.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "report.md"
    md.write_text(markdown(scores, info), encoding="utf-8")
    paper = {c: dict(zip(PAPER_MODELS, v)) for c, v in PAPER_NUMBERS.items() if c in scores.categories}
    report = {"run": asdict(info), "scores": scores.to_json(), "paper": paper}
    js = out_dir / "report.json"
    js.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return md, js, plot(scores, info, out_dir / "scores.png")
