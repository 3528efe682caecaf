"""User-facing errors: each names its cause in one line; the CLI prints it without a traceback.

`reason` is a short name of the kind of problem (see data/defects.py for a sample's), the same wherever the
problem is met, so that reports can count problems by kind.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class InterleaveError(Exception):
    """Base class for every error a user can cause with bad input."""

    reason = "error"

    def __init__(self, message: str = "", *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class MediaError(InterleaveError):
    """An image or video is missing, unreadable or empty."""

    reason = "unreadable media"


class PromptError(InterleaveError):
    """The prompt does not fit the inputs: slot count mismatch, or too long for the context."""

    reason = "bad prompt"


class ContextLengthError(PromptError):
    """The prompt, with room for the answer, does not fit in the model's context."""

    reason = "too long"


class KVBudgetError(PromptError):
    """The prompt with its answer needs more key/value memory than the engine's whole budget."""

    reason = "over kv budget"


class SamplingError(InterleaveError):
    """A generation setting is outside its range."""

    reason = "bad setting"


class CheckpointError(InterleaveError):
    """A directory or model id is not a usable checkpoint."""

    reason = "bad checkpoint"


class DeviceError(InterleaveError):
    """A device name is malformed or names hardware this machine does not have."""

    reason = "bad device"


class MissingExtraError(InterleaveError):
    """A feature needs an optional package that is not installed; the message names the extra to install."""

    reason = "missing package"


def one_line(err: BaseException) -> str:
    """A library's message squeezed to one line (some span several), so the CLI's error stays one line."""
    return " ".join(str(err).split()) or type(err).__name__


def import_extra(module: str, feature: str, extra: str) -> ModuleType:
    """Import an optional dependency where its feature is used, so the core install never needs it.

    Raises:
        MissingExtraError: the module (or one it needs) is not installed; one line naming the pip extra."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(f"{feature} needs the optional package {err.name or module}: "
                                f"pip install 'llava-interleave[{extra}]'") from err
