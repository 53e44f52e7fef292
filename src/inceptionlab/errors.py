"""Errors a user can act on. The CLI prints their message (no traceback) and exits non-zero."""


class InceptionLabError(Exception):
    """Base class: the message names the problem and the fix."""


class UnknownModelError(InceptionLabError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InputSizeError(InceptionLabError, ValueError):
    """An input image size the model cannot take."""


class ConfigError(InceptionLabError, ValueError):
    """An invalid training or command option."""


class ArgumentTypeError(InceptionLabError, TypeError):
    """A library function called with an argument of the wrong type; the message names the argument."""


class DatasetError(InceptionLabError):
    """A dataset missing, truncated, corrupted or failing verification (Fashion-MNIST's files or your images)."""


class RunDirError(InceptionLabError):
    """A run directory without what the command needs (weights, config, checkpoint)."""


class WriteError(InceptionLabError, OSError):
    """A file or directory that could not be written (disk full, read-only, no permission); the message names the
    path and the fix. An OSError too, so code that tolerates failed writes (``except OSError``) still does."""

    def __str__(self) -> str:  # OSError would format errno and filename instead of the message
        return str(self.args[0]) if self.args else ""


class PeerError(InceptionLabError):
    """Another process of a torchrun job stopped or stopped answering."""
