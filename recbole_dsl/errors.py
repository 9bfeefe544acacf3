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
    """A run stopped by the user (Ctrl-C); names the checkpoint to resume from, or, when
    training had ended, the best model that the test never evaluated."""

    def __init__(self, checkpoint: "str | None", trained: bool = False) -> None:
        self.checkpoint, self.trained = checkpoint, trained
        if trained:
            where = f": the best model is in {checkpoint}" if checkpoint else ""
            message = f"interrupted after training, before the test: no results were written{where}"
        elif checkpoint:
            message = f"interrupted: resume with --resume_file={checkpoint}"
        else:
            message = "interrupted before any checkpoint was written"
        super().__init__(message)

    def __reduce__(self):
        # Rebuilt from its fields, not the message, when it comes from another process.
        return DSLInterrupted, (self.checkpoint, self.trained)
