"""User-facing errors.

Every mistake a user can make (a bad name, a bad path, a bad value) raises a
subclass of :class:`LatentlensError` whose message is a full sentence naming
the bad value and the fix. The CLI prints such messages without a traceback.
"""

from __future__ import annotations


class LatentlensError(Exception):
    """Base class of every error caused by user input rather than by a bug."""


class UnknownNameError(LatentlensError, KeyError):
    """A site, step, attribute or model name that does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ConfigError(LatentlensError, ValueError):
    """A value that is out of range or inconsistent with the rest of the configuration."""


class StoreError(LatentlensError):
    """A problem with a run folder on disk (wrong model, corrupt, not writable)."""


class DescriberError(LatentlensError):
    """An image describer (local model or chat endpoint) failed or answered something unusable."""
