from __future__ import annotations

import pytest

from ingest.tiers import TIERS
from kb.model.reference.configuration_reference import ReferenceConfig


def test_round_trip():
    config = ReferenceConfig(d_model=64, n_layers=2)
    assert ReferenceConfig.from_dict(config.to_dict()) == config


def test_old_and_new_checkpoints_keep_loading():
    data = ReferenceConfig(d_model=64).to_dict()
    data["a_field_from_the_future"] = 7  # written by a newer version: ignored
    del data["repeat_min_span"]  # written before this field existed: its default
    config = ReferenceConfig.from_dict(data)
    assert config.d_model == 64
    assert config.repeat_min_span == ReferenceConfig().repeat_min_span


def test_tiers_match_ingest():
    config = ReferenceConfig()
    assert config.cell == 64
    for name, tier in TIERS.items():
        assert config.tier_sizes[name] == tier.size
        assert config.tier_tokens(name) == tier.tokens


def test_inconsistent_config_fails_with_numbers():
    with pytest.raises(ValueError, match="d_model 100 is not divisible by n_heads 3"):
        ReferenceConfig(d_model=100, n_heads=3)
    with pytest.raises(ValueError, match="size 500 is not a multiple of 64"):
        ReferenceConfig(tier_sizes={"odd": 500})


def test_a_config_saved_before_the_conv_stem_keeps_its_architecture():
    data = ReferenceConfig(d_model=64).to_dict()
    del data["stem"], data["stem_channels"], data["reader_abs_pos"]  # as the first weights
    old = ReferenceConfig.from_dict(data)
    assert (old.stem, old.reader_abs_pos) == ("patch", False)
    assert (ReferenceConfig().stem, ReferenceConfig().reader_abs_pos) == ("conv", True)
    with pytest.raises(ValueError, match="stem must be 'conv' or 'patch'"):
        ReferenceConfig(stem="vit")
