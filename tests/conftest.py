"""Shared fixtures. The tiny world is built once per machine (cached under cache/) and reused."""

import pytest


@pytest.fixture(scope="session")
def tiny_world_dir():
    from common.tiny_world import ensure_world

    return ensure_world()


@pytest.fixture(scope="session")
def tiny_policy(tiny_world_dir):
    from common.model import load_policy

    return load_policy(str(tiny_world_dir))


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory):
    """An untrained, very small Qwen2 (one layer, width 32) with the tiny world's tokenizer, saved like any
    model: for tests of the training machinery (numerics, faults) that need a policy but not a skilled
    one, so no world has to be built and each step takes milliseconds."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from common.tiny_world import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("random_model")
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
