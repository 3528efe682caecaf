"""What can be wrong with one sample, each named by one reason, and the bounds that keep checking it cheap.

Every defect is found once, on the one road into the sample (reading the entry, parsing the record, the
conversation's rules, loading media, fitting the context), and raised as an `InterleaveError` whose
`reason` is one of the names below. `data validate` and training call the same functions, so validate
reports exactly the samples training skips, with the same reasons.
"""

from __future__ import annotations

import re

from ..errors import PromptError

# reading the entry
UNREADABLE_JSON = "unreadable json"  # invalid UTF-8, invalid JSON, nested too deep
ENTRY_TOO_LARGE = "entry too large"
# the record's shape and text
MALFORMED_ENTRY = "malformed entry"  # wrong types
MISSING_CONVERSATIONS = "missing conversations"
BAD_TEXT = "bad text"  # lone surrogates, NUL characters, absurd lengths
# the conversation's structure
UNKNOWN_SPEAKER = "unknown speaker"
FIRST_NOT_HUMAN = "first turn not from human"
NOT_ALTERNATING = "turns not alternating human/gpt"
EMPTY_ANSWER = "empty answer"
NO_ANSWER = "no answer"  # no gpt turn: nothing to learn from
IMAGE_COUNT = "image count mismatch"
DUPLICATE_ID = "duplicate id"  # a later entry of a file with an id an earlier one has
# media
MISSING_MEDIA = "missing media"
UNREADABLE_MEDIA = "unreadable media"
IMAGE_TOO_LARGE = "image too large"
# the rendered sample
TOO_LONG = "too long"

MAX_ENTRY_BYTES = 16 * 2**20  # one JSON entry; real M4 entries are a few kB
MAX_TEXT_CHARS = 1_000_000  # one turn; far beyond any context (32k tokens are ~150k characters)
MAX_IMAGE_PIXELS = 8000 * 8000  # per image or frame (a 24 MP photo passes), read from the header before decoding

_BAD_CHARACTERS = re.compile("[\x00\ud800-\udfff]")


def check_text(text: str, where: str) -> None:
    """Refuse text no tokenizer can take: NUL characters, lone UTF-16 surrogates (valid JSON escapes such as
    "\\ud800" that are not characters), and lengths beyond `MAX_TEXT_CHARS`.

    Raises:
        PromptError: with reason `BAD_TEXT`, naming `where` and the position of the first bad character.
    """
    if len(text) > MAX_TEXT_CHARS:
        raise PromptError(f"{where}: {len(text):,} characters, over the limit of {MAX_TEXT_CHARS:,}", reason=BAD_TEXT)
    bad = _BAD_CHARACTERS.search(text)
    if bad is not None:
        what = "a NUL character" if bad.group() == "\x00" else f"a lone surrogate (\\u{ord(bad.group()):04x})"
        raise PromptError(f"{where}: {what} at character {bad.start()}", reason=BAD_TEXT)
