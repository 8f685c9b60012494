"""Error types raised by editx.

Every error a caller can trigger with bad input is an `InvalidInputError` (also a
`ValueError`) whose message names the offending argument and what was expected.
Problems with model files are `CheckpointError`s naming the file and key.
"""
from __future__ import annotations


class EditXError(Exception):
    """Base class of every error editx raises on purpose."""


class InvalidInputError(EditXError, ValueError):
    """A request argument is wrong (empty text, bad sample rate, NaN audio, ...)."""


class AudioFormatError(InvalidInputError):
    """Audio could not be decoded, or its sample rate / content is unusable."""


class CheckpointError(EditXError, FileNotFoundError):
    """A model file is missing, unreadable, or holds unexpected keys or shapes."""


class BackendUnavailableError(EditXError, RuntimeError):
    """A requested device or backend is not available on this machine."""
