"""Preference pairs from question-answer data, for trying DPO without a labelled preference set.

Each single-turn entry gives one pair: its own answer is chosen; rejected is a wrong answer of the same
kind (another option letter for a multi-choice question, another sample's answer of the same dataset
for an open-ended one). The synthetic data knows its answers, so these pairs are correct by construction.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

OPTION = re.compile(r"^\(([A-H])\)", re.MULTILINE)


def preference_pairs(entries: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    answers: dict[str, set[str]] = defaultdict(set)
    for entry in entries:
        answers[entry.get("metadata", {}).get("dataset", "")].add(entry["conversations"][-1]["value"])
    pairs = []
    for entry in entries:
        turns = entry["conversations"]
        if len(turns) != 2:
            continue
        prompt, chosen = turns[0]["value"], turns[1]["value"]
        letters = OPTION.findall(prompt)
        wrong = [x for x in letters if x != chosen] if letters else \
            sorted(answers[entry.get("metadata", {}).get("dataset", "")] - {chosen})
        if not wrong:
            continue
        pair = {"id": entry["id"], "prompt": prompt, "chosen": chosen, "rejected": rng.choice(wrong)}
        pair.update({k: entry[k] for k in ("image", "video") if k in entry})
        pairs.append(pair)
    return pairs


def write_pairs(train_json: Path, out: Path, seed: int = 0) -> int:
    pairs = preference_pairs(json.loads(Path(train_json).read_text()), seed)
    out.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    return len(pairs)
