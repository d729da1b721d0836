"""The lab's tests use the reference model's tiny config and fixtures."""

from tests.kb.model.reference.conftest import _two_threads, config, model  # noqa: F401
