"""User-facing errors: each names its cause in one line; the CLI prints it without a traceback."""


class InterleaveError(Exception):
    """Base class for every error a user can cause with bad input."""


class MediaError(InterleaveError):
    """An image or video is missing, unreadable or empty."""


class PromptError(InterleaveError):
    """The prompt does not fit the inputs: slot count mismatch, or too long for the context."""


class CheckpointError(InterleaveError):
    """A directory or model id is not a usable checkpoint."""
