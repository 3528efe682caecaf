"""Answer a bench with a model: greedy, continuously batched, turn by turn, resumable, sharded under torchrun.

Multi-turn samples (multi-view chat) are answered one round at a time with the model's *own* earlier
answers as history, as the paper evaluates them. `--batch-size` items are in the engine at once, each
joining as another leaves. Each item's predictions are appended and flushed as soon as it is done (so the
file is in completion order; scoring and the merged file follow the bench), a killed run loses at most the
items in flight, and a rerun with the same RUN_DIR skips
every item already there. A sample that cannot be answered (missing image, slot mismatch, prompt longer
than the context) is written with an `error` and an empty prediction: it scores 0 and is not retried.
RUN_DIR/run.json records what shapes the answers (model, template, frames, pooling, tokens), so a rerun
with other settings cannot silently mix two experiments in one predictions file.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..api import Pipeline, load
from ..data.sample import Sample, Turn, fill_slots
from ..engine import Request, SamplingConfig
from ..errors import InterleaveError
from ..model.checkpoint import DTYPES
from .bench import BenchItem, item_messages, read_bench
from .report import RunInfo, write_report
from .scoring import Prediction, Protocol, Scores, read_predictions, score
from .shards import Shard, current_shard, cut_broken_tail, finished, merge

DEFAULT_NEW_TOKENS: dict[str, int] = {"paper": 1024, "harness": 16}  # the authors' cap; the harness's cap


class EvalSettingsError(InterleaveError):
    """The run's settings are impossible, or RUN_DIR holds predictions made with other settings."""


@dataclass(frozen=True, kw_only=True)
class EvalSettings:
    """One evaluation run, as the `eval` command takes it."""

    model: str
    bench: str
    out_dir: Path
    split: str | None = None
    protocol: Protocol = "paper"
    max_new_tokens: int | None = None  # None: the protocol's cap
    batch_size: int = 1
    limit: int | None = None
    datasets: tuple[str, ...] = ()
    frames: int | None = None  # None: the model's processor default (16)
    video_pooling: str | None = None
    image_aspect: str | None = None  # None: the checkpoint's
    multi_aspect: str | None = None
    template: str = "qwen_1_5"
    image_root: str | None = None
    device: str | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        bad = [f"{name} must be at least {low}" for name, value, low in
               (("--batch-size", self.batch_size, 1), ("--limit", self.limit, 0), ("--frames", self.frames, 1),
                ("--max-new-tokens", self.max_new_tokens, 1)) if value is not None and value < low]
        if bad:
            raise EvalSettingsError("; ".join(bad))

    @property
    def new_tokens(self) -> int:
        return self.max_new_tokens or DEFAULT_NEW_TOKENS[self.protocol]


@dataclass(frozen=True, kw_only=True)
class EvalResult:
    predictions: Path
    scores: Scores | None  # None on ranks other than 0
    report: Path | None = None
    answered: int = 0  # items this process answered now (not skipped as already done)
    files: tuple[Path, ...] = field(default_factory=tuple)


def select_items(items: Sequence[BenchItem], datasets: Sequence[str] = (), limit: int | None = None) -> list[BenchItem]:
    """The items of the named datasets (all when none are named), the first `limit` of them."""
    wanted = {d.lower() for d in datasets}
    chosen = [it for it in items if not wanted or it.dataset.lower() in wanted]
    return chosen[:limit] if limit is not None else chosen


def item_sample(pipe: Pipeline, item: BenchItem, frames: int) -> Sample:
    """The whole item (questions with their reference answers) as a `Sample`, by the one road."""
    return pipe.sample(item_messages(item), num_frames=frames, multi_view=item.is_multi_view, sample_id=item.id)


def turn_sample(full: Sample, answers: Sequence[str], turn: int) -> Sample:
    """The conversation up to question `turn` (user turns at even positions), the model's own answers in
    place of the references before it."""
    turns = list(full.turns[: 2 * turn + 1])
    for k, answer in enumerate(answers[:turn]):
        turns[2 * k + 1] = Turn("assistant", fill_slots(answer, ()))
    return replace(full, turns=tuple(turns))


@dataclass(eq=False)
class _Asking:
    """An item being answered: its whole sample, the answers so far, and the request of its current turn."""

    item: BenchItem
    full: Sample
    answers: list[str] = field(default_factory=list)
    request: Request | None = None


def answer_stream(pipe: Pipeline, items: Sequence[BenchItem], frames: int, max_new_tokens: int,
                  window: int) -> Iterator[tuple[BenchItem, list[Prediction]]]:
    """Each item with its predictions, as soon as all its turns are answered (not in bench order).

    Up to `window` items are in the engine at once; an item's next turn joins the running batch as soon as
    its previous answer is done, and the next item as soon as one leaves (continuous batching: no row waits
    for the longest answer of a batch). Each item becomes a `Sample` once, by the one road."""
    sampling = SamplingConfig(max_new_tokens=max_new_tokens)
    todo, active = iter(items), []
    while True:
        while len(active) < window and (item := next(todo, None)) is not None:
            try:
                asking = _Asking(item, item_sample(pipe, item, frames))
            except InterleaveError as err:
                yield item, _predictions(item, [], str(err))
                continue
            if (error := _ask(pipe, asking, sampling)) is not None:
                yield item, _predictions(item, [], error)
                continue
            active.append(asking)
        if not active:
            return
        pipe.engine.step()
        for asking in [a for a in active if a.request is not None and a.request.finish is not None]:
            error = _take_answer(pipe, asking) or (_ask(pipe, asking, sampling)
                                                   if len(asking.answers) < len(asking.item.turns) else None)
            if error is not None or len(asking.answers) == len(asking.item.turns):
                active.remove(asking)
                yield asking.item, _predictions(asking.item, asking.answers, error)


def _ask(pipe: Pipeline, asking: _Asking, sampling: SamplingConfig) -> str | None:
    """Submit the item's next turn (its own earlier answers as history); the error that prevents it, if any."""
    try:
        asking.request = pipe.submit(turn_sample(asking.full, asking.answers, len(asking.answers)), sampling)
    except InterleaveError as err:
        return str(err)
    return None


def _take_answer(pipe: Pipeline, asking: _Asking) -> str | None:
    """Record the finished turn's answer; a user error of the sample (e.g. its visuals do not fit their
    slots) is returned, a fault of the model is raised."""
    request = asking.request
    assert request is not None and request.finish is not None
    asking.request = None
    if request.error is not None:
        if isinstance(request.error, InterleaveError):
            return str(request.error)
        raise request.error
    asking.answers.append(pipe.answer(request).text)
    return None


def _predictions(item: BenchItem, answers: list[str], error: str | None) -> list[Prediction]:
    """One prediction per turn; the turns after a failure carry the error and an empty answer."""
    return [Prediction(sample_id=item.id, dataset=item.dataset, category=item.category, split=item.split,
                       question_type=item.question_type, prediction=answers[k] if k < len(answers) else "",
                       answer=answer, turn=k, error=None if k < len(answers) else error)
            for k, (_, answer) in enumerate(item.turns)]


def load_pipeline(settings: EvalSettings, shard: Shard, pipe: Pipeline | None = None) -> Pipeline:
    """The model (loaded unless given) with the run's frame count, pooling and aspect rules; under torchrun
    each rank takes its own GPU."""
    if pipe is None:
        device = settings.device
        if device is None and shard.world > 1 and torch.cuda.is_available():
            device = f"cuda:{shard.rank % torch.cuda.device_count()}"
        pipe = load(settings.model, settings.template, device, DTYPES[settings.dtype] if settings.dtype else None)
    overrides = {"num_frames": settings.frames, "video_pooling": settings.video_pooling,
                 "image_aspect": settings.image_aspect, "multi_aspect": settings.multi_aspect}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return pipe.with_processor(**overrides) if overrides else pipe


def run_info(settings: EvalSettings, pipe: Pipeline, items: int, world: int) -> RunInfo:
    proc = pipe.config.processor
    aspect = f"{proc.image_aspect}+{proc.multi_aspect}" if proc.uses_anyres else proc.image_aspect  # as the images are made square
    return RunInfo(bench=settings.bench, model=settings.model, template=pipe.processor.template.name,
                   layout=f"{pipe.config.layout} ({proc.patch_merge}, {aspect})", frames=proc.num_frames,
                   video_pooling=proc.video_pooling, max_new_tokens=settings.new_tokens, protocol=settings.protocol,
                   split=settings.split or "", items=items, batch_size=settings.batch_size, processes=world)


def _check_run_dir(out_dir: Path, info: RunInfo, shard: Shard) -> None:
    """Refuse to mix predictions of other settings into this RUN_DIR; record these settings on first use."""
    path = out_dir / "run.json"
    shaping = info.answer_settings()
    if path.is_file():
        before = json.loads(path.read_text())
        changed = sorted(k for k in shaping if before.get(k) != shaping[k])
        if changed:
            raise EvalSettingsError(f"{out_dir} holds predictions made with other {', '.join(changed)} "
                              f"({', '.join(f'{k}={before.get(k)!r}' for k in changed)}); use another --out")
    elif shard.rank == 0:
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(shaping, indent=1) + "\n")
        partial.replace(path)


def run_eval(settings: EvalSettings, pipe: Pipeline | None = None) -> EvalResult:
    """Answer the bench into RUN_DIR/predictions.jsonl (resuming), then (rank 0) score it and write the report."""
    items = select_items(read_bench(settings.bench, settings.split, settings.image_root), settings.datasets, settings.limit)
    shard = current_shard()
    try:
        pipe = load_pipeline(settings, shard, pipe)
        info = run_info(settings, pipe, len(items), shard.world)
        settings.out_dir.mkdir(parents=True, exist_ok=True)
        _check_run_dir(settings.out_dir, info, shard)
        done = finished(settings.out_dir)
        shard.barrier()  # every rank has read what is done before any rank appends
        todo = [item for item in items[shard.rank :: shard.world] if item.key not in done]
        answered = _answer_into(pipe, todo, settings, shard.file(settings.out_dir))
        shard.barrier()
        if shard.rank != 0:
            return EvalResult(predictions=shard.file(settings.out_dir), scores=None, answered=answered)
        merged = merge(settings.out_dir, [item.key for item in items])
        keys = {item.key for item in items}
        scores = score([p for p in read_predictions(merged) if p.key[:2] in keys], settings.protocol)
        files = write_report(settings.out_dir, scores, info)
        return EvalResult(predictions=merged, scores=scores, report=files[0], answered=answered, files=files)
    finally:
        shard.close()


def _answer_into(pipe: Pipeline, todo: list[BenchItem], settings: EvalSettings, path: Path) -> int:
    """Answer `todo` batch by batch, appending each item's lines in one flushed write."""
    cut_broken_tail(path)
    start = time.perf_counter()
    frames = pipe.config.processor.num_frames
    answers = answer_stream(pipe, todo, frames, settings.new_tokens, settings.batch_size)
    with open(path, "a", encoding="utf-8") as out:
        for done, (item, predictions) in enumerate(answers, 1):
            out.write("".join(json.dumps(p.to_json({"question": q}), ensure_ascii=False) + "\n"
                              for p, (q, _) in zip(predictions, item.turns)))
            out.flush()
            if done % settings.batch_size == 0 or done == len(todo):
                print(f"eval: {done}/{len(todo)} answered, {time.perf_counter() - start:.1f} s", file=sys.stderr,
                      flush=True)
    return len(todo)
