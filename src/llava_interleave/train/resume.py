"""What a resumed run must share with the run it continues, and how the run directory keeps its configs.

A checkpoint's weights, optimiser moments, skip counters and data position mean what they mean only under
the config that made them: a resume with another learning rate, batch, seed, step count or data file is a
different experiment that log.jsonl cannot tell apart from the first. So `--resume` compares the new config
with the checkpoint's and refuses any difference, naming each key with its old and new value, unless
`--allow-config-change` is given. Keys that change how a run is carried out but not what it computes
(`FREE`) may differ; the batch is compared as the global batch, so a run saved by N processes still
resumes on any number with the same global batch.

`config.yaml` is written once, when a run starts from step 0; an allowed change is added as
`config.history/NNN.yaml`, headed by the step it took effect at and what changed.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, TrainConfig, to_dict

CONFIG_FILE = "config.yaml"
HISTORY_DIR = "config.history"
FREE = frozenset({"out_dir", "device", "distributed", "grad_checkpointing", "progress", "tensorboard", "log_every",
                  "save_every", "keep_last"})
GLOBAL_BATCH = "batch_size x grad_accum x processes"
ABSENT = "(absent)"  # a key one of the two configs does not have (written by another version)

Changes = dict[str, tuple[Any, Any]]  # key -> (old, new)


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and prefix + key != "model.processor":  # its keys are free-form
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _comparable(config: dict[str, Any], world: int) -> dict[str, Any]:
    """The keys that decide what a run computes; batch_size and grad_accum as the global batch."""
    values = {k: v for k, v in _flat(config).items() if k not in FREE and k not in ("batch_size", "grad_accum")}
    values[GLOBAL_BATCH] = config.get("batch_size", 1) * config.get("grad_accum", 1) * world
    return values


def config_changes(saved: dict[str, Any], saved_world: int, config: TrainConfig, world: int) -> Changes:
    """The keys whose value differs between a checkpoint's config (`to_dict` form) and `config`."""
    old, new = _comparable(saved, saved_world), _comparable(to_dict(config), world)
    return {key: (old.get(key, ABSENT), new.get(key, ABSENT)) for key in sorted(old.keys() | new.keys())
            if old.get(key, ABSENT) != new.get(key, ABSENT)}


def describe(changes: Changes) -> str:
    return ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())


def check_resume(state: dict[str, Any], checkpoint: Path, config: TrainConfig, world: int, allow: bool) -> Changes:
    """The config changes since `checkpoint` was written; allowed only when `allow` is set.

    Raises:
        ConfigError: a change without `allow`, in one line naming each key with its old and new value."""
    changes = config_changes(state["config"], state["world"], config, world)
    if changes and not allow:
        raise ConfigError(f"cannot resume from {checkpoint.name} with a changed config: {describe(changes)}; "
                          "resume with the saved values, or pass --allow-config-change to continue with the new ones")
    return changes


def record_config(run_dir: Path, config: TrainConfig, start: int, changes: Changes) -> None:
    """A run from step 0 writes config.yaml (and drops an older run's history); a resume leaves it as the
    original and adds a changed config to the history."""
    text = yaml.safe_dump(to_dict(config), sort_keys=False)
    history = run_dir / HISTORY_DIR
    if start == 0:
        (run_dir / CONFIG_FILE).write_text(text)
        shutil.rmtree(history, ignore_errors=True)
    elif changes:
        history.mkdir(exist_ok=True)
        number = len(list(history.glob("*.yaml"))) + 1
        (history / f"{number:03d}.yaml").write_text(f"# from step {start}: {describe(changes)}\n{text}")
