"""inceptionlab: GoogLeNet and the Inception family, as d2l's chapter defines them, and beyond."""

from inceptionlab.errors import InceptionLabError
from inceptionlab.models import create_model, list_models

__version__ = "0.1.0"

__all__ = ["InceptionLabError", "create_model", "list_models", "__version__"]
