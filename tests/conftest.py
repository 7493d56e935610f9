"""Shared fixtures: tiny configs, and reference checkpoints written by HF transformers itself.

Reference checkpoints are made here at test time (random weights, fixed seeds) by the
reference implementation, transformers 4.57.6 (`GPT2LMHeadModel` / `TFGPT2LMHeadModel`);
nothing is committed.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import socket

import numpy as np
import pytest

from tfdialogpt.config import DialoGPTConfig

TINY = DialoGPTConfig(
    vocab_size=211,
    max_positions=96,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    embedding_dropout=0.0,
    attention_dropout=0.0,
    residual_dropout=0.0,
    bos_token_id=210,
    eos_token_id=210,
)

# Every weight format transformers writes, as (directory name, writer).
FORMATS = ("pt_safetensors", "pt_sharded", "tf_h5", "tf_h5_sharded", "tf_safetensors", "tf_safetensors_sharded")


@pytest.fixture
def tiny_config() -> DialoGPTConfig:
    return TINY


def hf_config(config: DialoGPTConfig):
    from transformers import GPT2Config

    return GPT2Config(**config.to_hf_dict())


def make_reference(directory, config: DialoGPTConfig, seed: int, shard_size: str):
    """Writes a random-weight GPT-2 in every format with transformers; returns the PT model."""
    import torch
    from transformers import GPT2LMHeadModel, TFGPT2LMHeadModel

    torch.manual_seed(seed)
    pt = GPT2LMHeadModel(hf_config(config)).eval()
    # Random LayerNorm parameters too, so a swapped gamma/beta cannot go unnoticed.
    with torch.no_grad():
        for name, param in pt.named_parameters():
            if "ln_" in name:
                param.add_(torch.randn_like(param) * 0.1)
    pt.save_pretrained(directory / "pt_safetensors")
    pt.save_pretrained(directory / "pt_sharded", max_shard_size=shard_size)
    tf_model = TFGPT2LMHeadModel.from_pretrained(directory / "pt_safetensors", from_pt=True)
    tf_model.save_pretrained(directory / "tf_h5")
    tf_model.save_pretrained(directory / "tf_h5_sharded", max_shard_size=shard_size)
    tf_model.save_pretrained(directory / "tf_safetensors", safe_serialization=True)
    tf_model.save_pretrained(directory / "tf_safetensors_sharded", safe_serialization=True, max_shard_size=shard_size)
    return pt, tf_model


class Reference:
    """A reference checkpoint: its directory per format, and the HF models that wrote it."""

    def __init__(self, root, config, pt_model, tf_model):
        self.root, self.config, self.pt, self.tf = root, config, pt_model, tf_model

    def path(self, fmt: str = "tf_h5"):
        return self.root / fmt

    def pt_logits(self, input_ids, attention_mask):
        import torch

        position_ids = np.maximum(np.cumsum(attention_mask, axis=1) - 1, 0)
        with torch.no_grad():
            out = self.pt(
                torch.tensor(np.asarray(input_ids, np.int64)),
                attention_mask=torch.tensor(np.asarray(attention_mask, np.int64)),
                position_ids=torch.tensor(position_ids, dtype=torch.int64),
            )
        return out.logits.numpy()

    def tf_logits(self, input_ids, attention_mask):
        position_ids = np.maximum(np.cumsum(attention_mask, axis=1) - 1, 0)
        out = self.tf(
            np.asarray(input_ids, np.int32),
            attention_mask=np.asarray(attention_mask, np.int32),
            position_ids=position_ids.astype(np.int32),
        )
        return out.logits.numpy()


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory) -> Reference:
    root = tmp_path_factory.mktemp("reference_tiny")
    pt, tf_model = make_reference(root, TINY, seed=0, shard_size="20KB")
    return Reference(root, TINY, pt, tf_model)


@pytest.fixture(scope="session")
def small_reference(tmp_path_factory) -> Reference:
    """The full DialoGPT-small shape (124M parameters), random weights."""
    config = DialoGPTConfig.preset("small")
    root = tmp_path_factory.mktemp("reference_small")
    pt, tf_model = make_reference(root, config, seed=1, shard_size="200MB")
    return Reference(root, config, pt, tf_model)


def padded_batch(rng, vocab_size: int, lengths, side: str = "right", total: int | None = None):
    """Random ids [B, T] with a mask: rows of `lengths`, padded on `side` with id 0."""
    total = total or max(lengths)
    ids = np.zeros((len(lengths), total), np.int32)
    mask = np.zeros((len(lengths), total), np.int32)
    for row, n in enumerate(lengths):
        tokens = rng.integers(0, vocab_size, n)
        span = slice(total - n, total) if side == "left" else slice(0, n)
        ids[row, span], mask[row, span] = tokens, 1
    return ids, mask


HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_hub_cache(cache_dir, repo_id: str, files):
    """Lays files out as huggingface_hub's cache does (refs/main -> snapshots/<commit>/), so
    hub ids resolve offline; returns the snapshot directory."""
    import shutil

    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    snapshot = repo / "snapshots" / HUB_COMMIT
    snapshot.mkdir(parents=True)
    for f in files:
        shutil.copy(f, snapshot / os.path.basename(f))
    return snapshot


@pytest.fixture(scope="session")
def serving_models():
    """The serving tests' tiny models (seeds 0 and 1), built once per session."""
    from serving_utils import make_model

    return {seed: make_model(seed) for seed in (0, 1)}


@pytest.fixture(scope="session")
def serving_tokenizer(tmp_path_factory):
    """The serving models' byte-level tokenizer (one id per byte, EOS 256)."""
    from serving_utils import make_tokenizer

    return make_tokenizer(tmp_path_factory.mktemp("serving_tokenizer"))


@pytest.fixture(scope="session")
def shared_export(serving_models, serving_tokenizer, tmp_path_factory):
    """Version 1 of the seed-0 serving model, exported once per session (shared by modules)."""
    from serving_utils import CAP, WARMUP_LENGTHS

    from tfdialogpt.serving.export import export

    root = tmp_path_factory.mktemp("shared_export")
    return export(
        serving_models[0],
        root / "dialogpt",
        max_new_tokens_cap=CAP,
        warmup_prompt_lengths=WARMUP_LENGTHS,
        tokenizer=serving_tokenizer,
    )


@pytest.fixture
def hub_online(monkeypatch):
    """HF_HUB_OFFLINE unset, as most users have it; a connection attempt fails, so a test
    that should not need the network cannot reach it."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket.socket, "connect", _no_network)


def _no_network(*args, **kwargs):
    raise OSError("network access in a test that should not need it")
