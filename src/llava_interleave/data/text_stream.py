"""One answer's tokens turned into text pieces that are safe to show, with stop strings cut out; the Python
API's `stream_chat` and the server's streams share it.

A piece is held back while it ends in an incomplete UTF-8 character ("\\ufffd" once decoded) or in a
prefix of a stop string, because what follows may complete it; sent text is never taken back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class TextStream:
    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stops = tuple(s for s in stops if s)
        self.ids: list[int] = []
        self.text = ""  # what has been sent
        self.stopped = False  # a stop string was found: the answer ends before it

    def push(self, token: int) -> str:
        """Add a token; the new text that may be sent now (often "")."""
        self.ids.append(token)
        full = self._decode(self.ids)
        if full.endswith("\ufffd"):
            return ""
        cut = self._first_stop(full)
        if cut is not None:
            self.stopped = True
            return self._send(full[:cut])
        return self._send(full[: len(full) - self._held(full)])

    def flush(self) -> str:
        """The rest once the answer ended without a stop string (a held-back stop prefix is real text)."""
        return "" if self.stopped else self._send(self._decode(self.ids))

    def _send(self, upto: str) -> str:
        piece = upto[len(self.text) :]
        if piece:
            self.text = upto
        return piece

    def _first_stop(self, full: str) -> int | None:
        start = max(0, len(self.text) - max((len(s) for s in self._stops), default=0))
        hits = [i for i in (full.find(s, start) for s in self._stops) if i >= 0]
        return min(hits) if hits else None

    def _held(self, full: str) -> int:
        """Length of the longest end of `full` that could begin a stop string."""
        held = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(full)), held, -1):
                if full.endswith(stop[:n]):
                    held = n
                    break
        return min(held, len(full) - len(self.text))
