"""Random DeepSeek-OCR 2 checkpoints, built locally: the code path without the weights.

No weights can be downloaded on the project's machines, so tests save a *tiny* random
configuration as a checkpoint directory laid out like the published one (``config.json``,
``model.safetensors``, ``processor_config.json``, ``tokenizer.json`` ...) and load it through the
same code as real weights; the benchmark builds the *full-size* architecture on random weights
(speed does not depend on the weights). The tokenizer is built here too: byte-level, no merges,
plus DeepSeek's special tokens, so any text round-trips and nothing is fetched.

A random checkpoint carries ``kb-random-init.json``; the backend reports ``trained = False`` for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    DeepseekOcr2Config,
    DeepseekOcr2ForConditionalGeneration,
    DeepseekOcr2Processor,
    PreTrainedTokenizerFast,
)
from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import (
    DeepseekOcr2ImageProcessorPil,
)

RANDOM_INIT_FILE = "kb-random-init.json"  # present = random weights: answers mean nothing

# DeepSeek's own spellings (the published tokenizer has them, with other ids).
BOS, EOS, PAD, IMAGE = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<image>"
GROUNDING = ("<|grounding|>", "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>")
SPECIAL_TOKENS = (BOS, EOS, PAD, IMAGE, *GROUNDING)


def local_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges (one token per byte) and DeepSeek's special tokens:
    261 + 4 ids, every string encodable, built from nothing."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD
    )


def image_token_id(tokenizer: PreTrainedTokenizerFast) -> int:
    token_id = tokenizer.convert_tokens_to_ids(IMAGE)
    assert isinstance(token_id, int), token_id
    return token_id


def tiny_config(tokenizer: PreTrainedTokenizerFast, **text_overrides: Any) -> DeepseekOcr2Config:
    """Every module of the real architecture, a few thousand times smaller: runs on a CPU in
    well under a second per page. Resolutions and patch sizes stay the real ones (1024 / 768 views,
    16 px patches), so token counts per page are the real ones: 257 (1024 view) and 145 (768)."""
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,  # ~9 pages at 145 tokens: small enough to test the limit
        mlp_layer_types=["dense", "sparse"],  # the real one: first layer dense, then MoE
        n_routed_experts=4,
        n_shared_experts=1,
        moe_intermediate_size=32,
        num_experts_per_tok=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text.update(text_overrides)
    return DeepseekOcr2Config(
        vision_config=dict(
            sam_config=dict(
                hidden_size=32,
                output_channels=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                patch_size=16,  # the real one: 1024 px -> 64 x 64 patches -> 16 x 16 after the neck
                window_size=14,
                global_attn_indexes=[],  # windowed only: a global layer over 4,096 patches is slow
                downsample_channels=[32, 64],
            ),
            encoder_config=dict(
                hidden_size=64,  # must equal downsample_channels[-1]
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=4,
                max_position_embeddings=1024,  # 256 patches + 256 queries
                vocab_size=1,  # the vision encoder embeds no tokens
            ),
        ),
        text_config=text,
        image_token_id=image_token_id(tokenizer),
    )


def full_config(tokenizer: PreTrainedTokenizerFast) -> DeepseekOcr2Config:
    """The published DeepSeek-OCR 2 architecture (SAM ViT-B, a Qwen2-0.5B-sized encoder, the
    DeepSeek-3B-MoE decoder, 8,192 positions), transcribed from its config and transformers'
    conversion script. Only the vocabulary's special ids come from ``tokenizer``."""
    return DeepseekOcr2Config(
        vision_config=dict(
            sam_config=dict(  # SAM ViT-B: the class defaults
                hidden_size=768,
                num_hidden_layers=12,
                num_attention_heads=12,
                global_attn_indexes=[2, 5, 8, 11],
                downsample_channels=[512, 896],
            ),
            encoder_config=dict(  # Qwen2-0.5B-sized
                hidden_size=896,
                intermediate_size=4864,
                num_hidden_layers=24,
                num_attention_heads=14,
                num_key_value_heads=2,
                rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
                vocab_size=1,
            ),
        ),
        text_config=dict(  # DeepSeek-3B-MoE
            vocab_size=129280,
            hidden_size=1280,
            intermediate_size=6848,
            moe_intermediate_size=896,
            num_hidden_layers=12,
            num_attention_heads=10,
            num_key_value_heads=10,
            n_routed_experts=64,
            n_shared_experts=2,
            num_experts_per_tok=6,
            n_group=1,
            topk_group=1,
            topk_method="greedy",
            mlp_layer_types=["dense"] + ["sparse"] * 11,
            max_position_embeddings=8192,  # DeepSeek's own vLLM recipe: max_model_len=8192
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_id=image_token_id(tokenizer),
    )


def local_processor(tokenizer: PreTrainedTokenizerFast | None = None) -> DeepseekOcr2Processor:
    """The published preprocessing (1024 px global view, 768 px tiles, 2-6 tiles) with the local
    tokenizer."""
    return DeepseekOcr2Processor(
        image_processor=DeepseekOcr2ImageProcessorPil(), tokenizer=tokenizer or local_tokenizer()
    )


def random_model(config: DeepseekOcr2Config, seed: int = 0) -> DeepseekOcr2ForConditionalGeneration:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DeepseekOcr2ForConditionalGeneration(config)
    return model.eval()


def save_random_checkpoint(
    path: str | Path, seed: int = 0, size: str = "tiny", **text_overrides: Any
) -> Path:
    """Write a random checkpoint directory laid out like the published one; returns its path.

    ``size``: "tiny" (tests) or "full" (the published architecture: ~3.4 B parameters, 13 GB in
    fp32; mind the disk). ``text_overrides`` change the tiny decoder (e.g. max_position_embeddings).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    processor = local_processor()
    if size == "tiny":
        config = tiny_config(processor.tokenizer, **text_overrides)
    elif size == "full":
        config = full_config(processor.tokenizer)
    else:
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    random_model(config, seed).save_pretrained(path)
    processor.save_pretrained(path)
    (path / RANDOM_INIT_FILE).write_text(
        json.dumps({"seed": seed, "size": size, "note": "random weights: answers mean nothing"})
        + "\n"
    )
    return path
