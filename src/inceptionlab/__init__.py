"""inceptionlab: GoogLeNet and the Inception family, as d2l's chapter defines them, and beyond."""

from inceptionlab.errors import InceptionLabError

__version__ = "0.1.0"

__all__ = ["InceptionLabError", "create_model", "list_models", "__version__"]


def __getattr__(name: str):
    # the registry imports torch (~1 s): only when asked for, so `inceptionlab --help` / `--version` stay instant
    if name in ("create_model", "list_models"):
        from inceptionlab import models

        return getattr(models, name)
    raise AttributeError(f"module 'inceptionlab' has no attribute {name!r}")
