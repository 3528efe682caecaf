"""Per-answer scores of both bench protocols, and our own ROUGE-L.

Both protocols score open-ended answers with the `rouge` package's (pypi `rouge` 1.0.1) summary-level
ROUGE-L F. That package is not a dependency: `rouge_l` below re-implements exactly what it computes, quirks
included, because those quirks move the numbers:
  - a text is cut into sentences at every '.', each sentence's whitespace runs squeezed to one space, and
    sentences are split on ' ' into words (a whitespace-only sentence is the one word "");
  - words are counted as *sets*: m and n are the numbers of distinct words of answer and prediction;
  - the overlap is the size of the union, over every (answer sentence, prediction sentence) pair, of the
    words of one particular LCS (the package's back-tracking order decides which one);
  - F = 2PR / (P + R + 1e-8), so a perfect match scores 0.99999999..., not 1.
The package raises when a side has no sentence ("", "..."); we return 0.0 there.

Paper protocol ("paper"): the authors' VQA-style normalisation of prediction and answer, then ROUGE-L of the
prediction's first 512 characters, or for multi-choice an exact match after the ':' letter rule.
Harness protocol ("harness"): a letter from "A. ..." or the first standalone A-E, exact match; ROUGE-L on
the raw text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# The VQA evaluation's punctuation handling, as the authors' scorer uses it.
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # meant as a look-behind; as written: a '.' not followed by a digit
_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")
_PERIOD_LIMIT = 32  # the original passes re.UNICODE (= 32) as sub()'s count: at most 32 periods go
MC_LETTERS = "abcdefgh"
ROUGE_PREFIX = 512  # characters of the prediction that ROUGE-L sees
_HARNESS_OPTION = re.compile(r"^([A-E])\.\s*(.+)$", re.IGNORECASE)
_HARNESS_LETTER = re.compile(r"\b([A-E])\b", re.IGNORECASE)


def _punctuation(text: str) -> str:
    """Each mark is deleted when it touches a space anywhere in the text (or the text has a digit,digit
    comma), else replaced by a space; then periods not followed by a digit are deleted."""
    out = text
    digit_comma = _DIGIT_COMMA.search(text) is not None
    for mark in _PUNCTUATION:
        touching = mark + " " in text or " " + mark in text
        out = out.replace(mark, "" if touching or digit_comma else " ")
    return _PERIOD.sub("", out, count=_PERIOD_LIMIT)


def normalize(text: str) -> str:
    """The paper scorer's normalisation: newline/tab -> space, strip, punctuation, outer quotes and
    parentheses stripped, lowercase."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = _punctuation(text)
    return text.strip("'").strip('"').strip(")").strip("(").strip().lower()


def _sentences(text: str) -> list[list[str]]:
    """The `rouge` package's tokenisation: sentences at '.', words at ' ' after squeezing whitespace."""
    return [" ".join(part.split()).split(" ") for part in text.split(".") if part]


def _lcs_words(reference: Sequence[str], candidate: Sequence[str]) -> set[str]:
    """The words of the LCS that the package's back-tracking picks (ties step through the candidate first)."""
    rows, cols = len(reference), len(candidate)
    table = [[0] * (cols + 1) for _ in range(rows + 1)]
    for i in range(1, rows + 1):
        above, here, word = table[i - 1], table[i], reference[i - 1]
        for j in range(1, cols + 1):
            here[j] = above[j - 1] + 1 if word == candidate[j - 1] else max(above[j], here[j - 1])
    words: set[str] = set()
    i, j = rows, cols
    while i > 0 and j > 0:
        if reference[i - 1] == candidate[j - 1]:
            words.add(reference[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words


def rouge_l(prediction: str, answer: str) -> float:
    """Summary-level ROUGE-L F of `prediction` against `answer`, as `rouge.Rouge().get_scores` gives it;
    0.0 where the package would raise because a side has no sentence."""
    predicted, reference = _sentences(prediction), _sentences(answer)
    if not predicted or not reference:
        return 0.0
    union: set[str] = set()
    for ref_words in reference:
        for pred_words in predicted:
            union |= _lcs_words(ref_words, pred_words)
    recall = len(union) / len({w for s in reference for w in s})
    precision = len(union) / len({w for s in predicted for w in s})
    return 2.0 * ((precision * recall) / (precision + recall + 1e-8))


def paper_choice(prediction: str) -> str:
    """The paper's multi-choice reading of a normalised prediction: with a ':', the last ':'-separated piece
    that is one letter a-h; otherwise the whole prediction."""
    if ":" in prediction:
        for piece in (p.strip() for p in prediction.split(":")):
            if len(piece) == 1 and piece in MC_LETTERS:
                prediction = piece
    return prediction


def harness_choice(text: str) -> str:
    """The harness's reading of a multi-choice text (prediction or answer): the letter of "A. ...", else the
    first standalone A-E in the normalised text, else the normalised text."""
    option = _HARNESS_OPTION.match(text.strip())
    if option:
        return option.group(1).upper()
    normal = normalize(text)
    letter = _HARNESS_LETTER.search(normal)
    return letter.group(1).upper() if letter else normal


def paper_score(prediction: str, answer: str, multi_choice: bool) -> float | None:
    """One answer under the paper protocol, in 0..1; None for an open-ended sample with an empty answer
    (the authors skip those)."""
    pred, gold = normalize(prediction), normalize(answer)
    if multi_choice:
        return float(paper_choice(pred) == gold)
    if not gold:
        return None
    return rouge_l(pred[:ROUGE_PREFIX], gold) if pred else 0.0


def harness_score(prediction: str, answer: str, multi_choice: bool) -> float | None:
    """One answer under the harness protocol, in 0..1; None for an open-ended sample with an empty answer
    (on which the harness itself would crash)."""
    if multi_choice:
        return float(harness_choice(prediction) == harness_choice(answer))
    if not _sentences(answer):
        return None
    return rouge_l(prediction[:ROUGE_PREFIX], answer) if prediction else 0.0
