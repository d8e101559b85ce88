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


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into an interrupt (the CLI installs the handler), so every ``finally``
    and every "close the MLflow run as KILLED" path runs exactly as on Ctrl-C."""

    def __init__(self, signum: int = 15) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


#: CLI exit code: the answer was printed (and, with ``--json``, returned) but recording it
#: in MLflow failed; the one-line reason is on stderr. Distinct from 1 (no answer),
#: 2 (usage or input error) and 130 (Ctrl-C).
EXIT_NOT_RECORDED = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
