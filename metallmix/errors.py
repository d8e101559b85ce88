"""Error types shared by every part of MetaLLMiX.

Every error a user can trigger derives from :class:`MetaLLMiXError`, so the CLI can turn it
into a one-line reason and a non-zero exit, while genuine bugs still show a traceback.
Messages say what went wrong, where (file, row, key) and how to fix it.
"""

from __future__ import annotations


class MetaLLMiXError(Exception):
    """Base class for errors caused by user input or environment, not by a bug."""


class DatasetError(MetaLLMiXError):
    """A dataset cannot be read or is unusable (missing, empty, one class, corrupt...)."""


class KnowledgeBaseError(MetaLLMiXError):
    """The knowledge base cannot be opened, read or written, or an import is malformed."""


class ImportFormatError(KnowledgeBaseError):
    """A file offered to an importer does not have the expected layout."""


class ModelUnavailableError(MetaLLMiXError):
    """A model (LLM weights or timm weights) is missing, unverifiable or corrupt."""


class ConfigError(MetaLLMiXError):
    """A configuration (hyperparameters, search space, settings) is invalid."""


class TrackingError(MetaLLMiXError):
    """The MLflow tracking store (database or artifact folder) cannot be used."""
