"""A tiny config of the reference model: every test runs on the CPU in well under a second."""

from __future__ import annotations

import pytest
import torch

from kb.model.reference.backend import random_model
from kb.model.reference.configuration_reference import ReferenceConfig
from kb.model.reference.modeling_reference import ReferenceModel


def tiny_config(**overrides) -> ReferenceConfig:
    fields = dict(
        enc_conv_dim=8,
        enc_conv_blocks=1,
        enc_layers=1,
        d_model=32,
        n_heads=2,
        mlp_ratio=2,
        n_layers=2,
        text_layers=1,
        span_dim=8,
    )
    fields.update(overrides)
    return ReferenceConfig(**fields)


@pytest.fixture
def config() -> ReferenceConfig:
    return tiny_config()


@pytest.fixture
def model(config: ReferenceConfig) -> ReferenceModel:
    return random_model(config, seed=1)


@pytest.fixture(autouse=True)
def _two_threads():
    # The target machine has two cores; more threads only add noise to small ops.
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
