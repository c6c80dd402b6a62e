"""contrastkit: contrastive training of embedding models, proven on retrieval."""

from contrastkit.errors import ConfigError, ContrastkitError, DataError, ModelLoadError

__version__ = "0.1.0"

__all__ = ["ConfigError", "ContrastkitError", "DataError", "ModelLoadError", "__version__"]
