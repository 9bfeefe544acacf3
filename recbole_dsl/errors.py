"""Errors that the command line reports as one line, without a traceback."""

from __future__ import annotations


class DSLError(Exception):
    """A problem with the user's input, reported on one line without a traceback."""


class DSLConfigError(DSLError, ValueError):
    """An invalid DSL property or RecBole setting."""


class DSLDatasetError(DSLError):
    """A dataset that cannot be found or read."""


class DSLCheckpointError(DSLError):
    """A checkpoint that cannot be read or does not fit the model."""


class DSLSweepError(DSLError, ValueError):
    """A sweep file, sweep directory or Ray cluster that a sweep cannot use."""


class DSLInterrupted(DSLError):
    """Training stopped by the user (Ctrl-C); names the checkpoint to resume from."""

    def __init__(self, checkpoint: "str | None") -> None:
        self.checkpoint = checkpoint
        resume = f": resume with --resume_file={checkpoint}" if checkpoint else " before any checkpoint was written"
        super().__init__(f"interrupted{resume}")

    def __reduce__(self):
        # Rebuilt from the checkpoint, not the message, when it comes from another process.
        return DSLInterrupted, (self.checkpoint,)
