"""LLaVA-Interleave Bench readers: the original JSON release, the parquet release, and any JSON in that layout.

Every form becomes the same frozen `BenchItem`s, so the runner and the scores cannot tell them apart:
  - original JSON (`multi_image_in_domain.json`, `multi_image_out_domain.json`, `multi_view_in_domain.json`):
    `{"sample_id", "conversations", "image": [relative paths], "choice_list", "metadata": {"dataset",
    "split", "question_type", ...}}`, images under an image folder (default: the JSON's folder);
  - parquet (configs in_domain / out_of_domain / multi_view_in_domain): `sample_id, sub_task,
    question_type, question, answer, image_0..image_15` (image structs `{bytes, path}` or raw bytes) and,
    for multi-turn samples, `conversations`; read with pyarrow (`pip install 'llava-interleave[parquet]'`);
  - our synthetic bench (`data synth`), a JSON in the original layout where a video is a frame folder.
A path that is a video file or a frame folder is one video, sampled to `frames` when the item is answered.
`item_messages` turns an item into the conversation that the one road (`data/conversation.py`) makes a
`Sample` of, so the bench's images get the modalities that training and serving give them.
Parquet images stay on disk until then: a bench of thousands of images costs no memory up front.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from ..data.conversation import Media, Message, attach_media, is_multi_view_dataset
from ..data.media import load_image
from ..data.records import DataError, JsonSource
from ..data.sample import Role
from ..errors import InterleaveError, MediaError, import_extra
from .categories import SPLITS, canonical_split, place

ORIGINAL_FILES = {"in_domain": "multi_image_in_domain.json", "out_domain": "multi_image_out_domain.json",
                  "multi_view": "multi_view_in_domain.json"}
PARQUET_CONFIGS = {"in_domain": "in_domain", "out_domain": "out_of_domain", "multi_view": "multi_view_in_domain"}
MAX_PARQUET_IMAGES = 16


class BenchError(InterleaveError):
    """A bench path, file or entry is unusable."""


@dataclass(frozen=True)
class ParquetImage:
    """One image cell of a parquet file, read when its item is answered."""

    path: str
    row_group: int
    row: int  # within the row group
    column: str

    def open(self) -> Image.Image | Path:
        return read_parquet_cell(self)


ImageRef = str | ParquetImage  # an absolute path (image, video file or frame folder) or a parquet cell


@dataclass(frozen=True, kw_only=True)
class BenchItem:
    """One bench sample: its rounds of (question, reference answer) and its media in slot order."""

    id: str
    dataset: str
    category: str
    split: str
    question_type: str  # "multi-choice" | "open-ended"
    turns: tuple[tuple[str, str], ...]
    images: tuple[ImageRef, ...]
    choice_list: tuple[str, ...] | None = None
    scenario: str = ""  # "multi-view" when the bench says so: those images are views of one scene

    @property
    def key(self) -> tuple[str, str]:
        return self.dataset, self.id

    @property
    def is_multi_view(self) -> bool:
        return self.scenario == "multi-view" or self.split == "multi_view" or is_multi_view_dataset(self.dataset)


def _split(hint: str | None, dataset: str, stated: Any) -> str:
    """The split an item is scored in: the file or config chosen, else the dataset's known split, else
    the entry's own, else in_domain."""
    stated = canonical_split(stated)
    return hint or place(dataset).split or (stated if stated in SPLITS else None) or "in_domain"


def _turns(conversations: Any, where: str) -> tuple[tuple[str, str], ...]:
    """(question, answer) rounds from alternating human / gpt turns; a final question may lack its answer."""
    if isinstance(conversations, str):
        conversations = json.loads(conversations)
    if not isinstance(conversations, list) or not conversations:
        raise BenchError(f"{where}: missing or empty 'conversations'")
    rounds: list[tuple[str, str]] = []
    for k, turn in enumerate(conversations):
        speaker = turn.get("from", turn.get("role")) if isinstance(turn, dict) else None
        text = turn.get("value", turn.get("content")) if isinstance(turn, dict) else None
        expected = ("human", "user") if k % 2 == 0 else ("gpt", "assistant")
        if speaker not in expected or not isinstance(text, str):
            raise BenchError(f"{where}: turn {k} should be a {expected[0]} turn with text")
        if k % 2 == 0:
            rounds.append((text, ""))
        else:
            rounds[-1] = (rounds[-1][0], text)
    return tuple(rounds)


def item_from_entry(obj: Any, image_root: Path, split: str | None, where: str) -> BenchItem:
    """A `BenchItem` from one entry of the original (or our synthetic) JSON layout."""
    if not isinstance(obj, dict):
        raise BenchError(f"{where}: expected a JSON object")
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    dataset = str(meta.get("dataset") or obj.get("dataset") or "unknown")
    names = obj.get("image", obj.get("images")) or []
    names = [names] if isinstance(names, str) else names
    choices = obj.get("choice_list")
    qtype = meta.get("question_type") or obj.get("question_type") or ("multi-choice" if choices else "open-ended")
    item_split = _split(split, dataset, meta.get("split"))
    return BenchItem(id=str(obj.get("sample_id", obj.get("id", where))), dataset=dataset,
                     category=place(dataset).category, split=item_split, question_type=str(qtype),
                     turns=_turns(obj.get("conversations"), where),
                     images=tuple(str((image_root / str(n)).absolute()) for n in names),
                     choice_list=tuple(str(c) for c in choices) if isinstance(choices, list) else None,
                     scenario=str(meta.get("scenario") or ""))


def read_json_bench(path: Path, image_root: Path | None = None, split: str | None = None) -> list[BenchItem]:
    """Every entry of a bench JSON (a list) or JSONL file; relative image paths start at `image_root`."""
    try:
        source = JsonSource(path)
    except DataError as err:
        raise BenchError(str(err)) from err
    root = image_root or path.parent
    return [item_from_entry(source.raw(i), root, split, f"{path}:{source.line(i)}") for i in range(len(source))]


def _pyarrow_parquet() -> Any:
    """pyarrow is the `parquet` extra, imported only when a parquet bench is read."""
    return import_extra("pyarrow.parquet", "reading a parquet bench", "parquet")


def _parquet_files(folder: Path, split: str) -> list[Path]:
    """The parquet files of the split's config: a folder or file-name prefix names the config; a folder
    whose files name no config at all is taken whole."""
    files = sorted(folder.rglob("*.parquet"))
    if not files:
        raise BenchError(f"{folder} holds neither {ORIGINAL_FILES[split]} nor .parquet files")

    def config_of(file: Path) -> str | None:
        parts = file.relative_to(folder).parts
        names = [c for c in PARQUET_CONFIGS.values() if c in parts[:-1] or file.stem == c or
                 file.stem.startswith((c + "-", c + "_"))]
        return max(names, key=len) if names else None

    configs = {f: config_of(f) for f in files}
    if not any(configs.values()):
        return files
    chosen = [f for f, c in configs.items() if c == PARQUET_CONFIGS[split]]
    if not chosen:
        raise BenchError(f"{folder} has no parquet files for config {PARQUET_CONFIGS[split]!r} (split {split})")
    return chosen


def read_parquet_bench(files: list[Path], split: str | None = None) -> list[BenchItem]:
    """Items of parquet bench files; images are referenced by (file, row group, row, column)."""
    pq = _pyarrow_parquet()
    items = []
    for file in files:
        parquet = pq.ParquetFile(file)
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group)
            image_columns = [f"image_{k}" for k in range(MAX_PARQUET_IMAGES) if f"image_{k}" in table.column_names]
            present = {c: table.column(c).is_valid().to_pylist() for c in image_columns}
            text = table.drop_columns(image_columns).to_pylist()
            for row, record in enumerate(text):
                images = tuple(ParquetImage(str(file), group, row, c) for c in image_columns if present[c][row])
                items.append(_parquet_item(record, images, split, f"{file} row group {group} row {row}"))
    return items


def _parquet_item(record: dict[str, Any], images: tuple[ImageRef, ...], split: str | None, where: str) -> BenchItem:
    dataset = str(record.get("sub_task") or record.get("dataset") or "unknown")
    turns = ((str(record.get("question") or ""), str(record.get("answer") or "")),)
    if record.get("conversations"):
        rounds = _turns(record["conversations"], where)
        turns = rounds if len(rounds) > 1 else turns
    choices = record.get("choice_list")
    return BenchItem(id=str(record.get("sample_id", where)), dataset=dataset, category=place(dataset).category,
                     split=_split(split, dataset, record.get("split")),
                     question_type=str(record.get("question_type") or "open-ended"), turns=turns, images=images,
                     choice_list=tuple(str(c) for c in choices) if isinstance(choices, list) else None)


def _unique(items: list[BenchItem]) -> list[BenchItem]:
    """A repeated (dataset, id) gets "#2", "#3" ... in file order, so resuming and merging, which go by
    that key, never drop a sample."""
    seen: dict[tuple[str, str], int] = {}
    out = []
    for item in items:
        seen[item.key] = seen.get(item.key, 0) + 1
        out.append(item if seen[item.key] == 1 else replace(item, id=f"{item.id}#{seen[item.key]}"))
    return out


def read_bench(path: str | Path, split: str | None = None, image_root: str | Path | None = None) -> list[BenchItem]:
    """The items of a bench: a JSON/JSONL file, a parquet file, or a folder holding the original JSON
    files or parquet configs (then `split`, default in_domain, picks the file or config)."""
    return _unique(_read(Path(path).expanduser(), split, image_root))


def _read(path: Path, split: str | None, image_root: str | Path | None) -> list[BenchItem]:
    split = canonical_split(split)
    if split is not None and split not in SPLITS:
        raise BenchError(f"unknown split {split!r}; use in_domain, out_domain or multi_view")
    root = Path(image_root).expanduser() if image_root else None
    if path.is_dir():
        chosen = split or "in_domain"
        original = path / ORIGINAL_FILES[chosen]
        if original.is_file():
            return read_json_bench(original, root, chosen)
        return read_parquet_bench(_parquet_files(path, chosen), chosen)
    if not path.is_file():
        raise BenchError(f"bench not found: {path}")
    if path.suffix.lower() == ".parquet":
        return read_parquet_bench([path], split)
    return read_json_bench(path, root, split)


@lru_cache(maxsize=1)
def _row_group_images(path: str, group: int) -> Any:
    """The image columns of one row group; items come in file order, so one cached group serves a run."""
    pq = _pyarrow_parquet()
    parquet = pq.ParquetFile(path)
    columns = [c for c in parquet.schema_arrow.names if c.startswith("image_")]
    return parquet.read_row_group(group, columns=columns)


def read_parquet_cell(ref: ParquetImage) -> Image.Image | Path:
    """A parquet image cell: its decoded bytes, or else the path it holds (relative to the parquet file),
    which may also name a video or a frame folder."""
    cell = _row_group_images(ref.path, ref.row_group).column(ref.column)[ref.row].as_py()
    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if data:
        try:
            return load_image(Image.open(io.BytesIO(data)))
        except (OSError, ValueError) as err:
            raise MediaError(f"cannot decode {ref.column} of {ref.path} row {ref.row}: {err}") from err
    name = cell.get("path") if isinstance(cell, dict) else None
    if not name:
        raise MediaError(f"{ref.column} of {ref.path} row {ref.row} holds neither bytes nor a path")
    return (Path(ref.path).parent / name).absolute()


def item_messages(item: BenchItem) -> list[Message]:
    """The item as a conversation with its reference answers, media handed to the questions by their
    `<image>` slots (all to the first question when it has none); nothing is opened yet."""
    turns: list[tuple[Role, str]] = []
    for question, answer in item.turns:
        turns += [("user", question), ("assistant", answer)]
    return attach_media(turns, [Media(kind="image", source=ref) for ref in item.images], item.id)
