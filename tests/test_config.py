"""The config dataclass: presets, validation, and HF config.json in and out."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tfdialogpt.config import PRESETS, ConfigError, DialoGPTConfig


@pytest.mark.parametrize(
    "name, layers, hidden, heads, params_millions",
    [("small", 12, 768, 12, 124), ("medium", 24, 1024, 16, 355), ("large", 36, 1280, 20, 774)],
)
def test_presets_are_the_dialogpt_shapes(name, layers, hidden, heads, params_millions):
    cfg = DialoGPTConfig.preset(name)
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads) == (layers, hidden, heads)
    assert (cfg.vocab_size, cfg.max_positions, cfg.eos_token_id) == (50257, 1024, 50256)
    assert round(cfg.num_parameters / 1e6) == params_millions


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field"):
        DialoGPTConfig().num_layers = 3


@pytest.mark.parametrize(
    "cfg", list(PRESETS.values()) + [DialoGPTConfig(hidden_size=64, num_heads=4, intermediate_size=100, pad_token_id=0)]
)
def test_json_round_trip(cfg, tmp_path):
    path = cfg.save(tmp_path)
    assert DialoGPTConfig.from_json_file(path) == cfg


def test_transformers_reads_our_config_and_we_read_theirs(tmp_path):
    from transformers import GPT2Config

    ours = DialoGPTConfig.preset("medium")
    ours.save(tmp_path)
    theirs = GPT2Config.from_pretrained(tmp_path)
    assert (theirs.n_layer, theirs.n_embd, theirs.n_head, theirs.n_positions) == (24, 1024, 16, 1024)
    theirs.save_pretrained(tmp_path / "back")
    assert DialoGPTConfig.from_json_file(tmp_path / "back" / "config.json") == ours


def test_hub_style_config_json():
    """The keys of microsoft/DialoGPT-small's config.json (2020 spelling, with n_ctx)."""
    data = {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": 50256,
        "embd_pdrop": 0.1,
        "eos_token_id": 50256,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_ctx": 1024,
        "n_embd": 768,
        "n_head": 12,
        "n_layer": 12,
        "n_positions": 1024,
        "resid_pdrop": 0.1,
        "vocab_size": 50257,
        "task_specific_params": {"conversational": {"max_length": 1000}},
    }
    assert DialoGPTConfig.from_hf_dict(data) == DialoGPTConfig.preset("small")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hidden_size": 100, "num_heads": 12}, "divisible"),
        ({"num_layers": 0}, "num_layers"),
        ({"attention_dropout": 1.5}, "attention_dropout"),
    ],
)
def test_invalid_values(change, message):
    with pytest.raises(ConfigError, match=message):
        DialoGPTConfig(**change)


@pytest.mark.parametrize(
    "key, value",
    [
        ("scale_attn_by_inverse_layer_idx", True),
        ("reorder_and_upcast_attn", True),
        ("activation_function", "relu"),
        ("model_type", "bert"),
    ],
)
def test_unsupported_hf_settings_are_refused(key, value):
    data = {**DialoGPTConfig().to_hf_dict(), key: value}
    with pytest.raises(ConfigError, match=key if key != "model_type" else "model_type"):
        DialoGPTConfig.from_hf_dict(data)


def test_missing_key_and_bad_json(tmp_path):
    data = DialoGPTConfig().to_hf_dict()
    del data["n_embd"]
    with pytest.raises(ConfigError, match="missing the key 'n_embd'"):
        DialoGPTConfig.from_hf_dict(data)
    (tmp_path / "config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="JSON object"):
        DialoGPTConfig.from_json_file(tmp_path / "config.json")
