"""The reference model: the project's own small optical-memory model (encoder + reader).

As transformers lays out a model folder: configuration, modeling, processing, and the backend
that serves it behind ``kb.model.base.Backend``. Training and evaluation live in ``lab/``.
"""

from kb.model.reference.backend import ReferenceBackend

__all__ = ["ReferenceBackend"]
