"""Errors a user can cause. The CLI prints them as one line and exits non-zero; anything else is a bug."""


class SnailError(Exception):
    """Base class: the message is a complete, user-facing sentence."""

    exit_code = 1


class UsageError(SnailError):
    """Bad arguments: an unknown codec, values no run can use, conflicting options (a model that cannot
    be had is a ModelError)."""

    exit_code = 2


class DatasetError(SnailError):
    """A data set is missing, incomplete or not in the official format."""


class ImageError(SnailError):
    """An input image cannot be read or cannot be coded exactly (mode, bit depth)."""


class FormatError(SnailError):
    """A .snail file is not valid: wrong magic, unknown version, corrupt, truncated."""


class ModelError(SnailError):
    """A model name, checkpoint or weights file is unknown or invalid."""


class ChannelCountError(ModelError):
    """A model codes another number of channels than asked for (RGB against grayscale)."""
