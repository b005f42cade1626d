"""Errors that reach the user as one line (the CLI prints them without a traceback, exit code 2)."""


class UserError(Exception):
    """A mistake the user can fix: bad path, unknown model, bad flag value."""

    exit_code = 2


class ModelNotFound(UserError):
    """The requested model URI / file does not exist or is not a dfbatch model."""


class CheckpointError(UserError):
    """A checkpoint file is unreadable, not weights-only, or does not match the model spec."""
