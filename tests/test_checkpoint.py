"""Checkpoint formats, strictness, hub resolution offline, and round trips with transformers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from conftest import TINY, fill_hub_cache, padded_batch

from tfdialogpt import DialoGPT
from tfdialogpt.checkpoint import (
    CheckpointError,
    canonical_name,
    expected_shapes,
    load_config,
    read_weights,
)


@pytest.fixture(scope="module")
def batch():
    return padded_batch(np.random.default_rng(7), TINY.vocab_size, [8, 3, 6], side="left")


def masked_max_diff(a, b, mask):
    return float(np.max(np.abs(a - b) * mask[..., None]))


@pytest.mark.parametrize(
    "raw, canonical",
    [
        ("transformer/tfgpt2lm_head_model/transformer/h_._3/attn/c_attn/weight:0", "h.3.attn.c_attn.weight"),
        ("transformer/tfgp_t2lm_head_model/transformer/wte/weight:0", "wte.weight"),
        ("tfgpt2lm_head_model/transformer/wte/embeddings:0", "wte.weight"),
        ("transformer/wpe/embeddings:0", "wpe.weight"),
        ("transformer/h_._0/ln_1/gamma:0", "h.0.ln_1.weight"),
        ("transformer/ln_f/beta:0", "ln_f.bias"),
        ("transformer.h.11.mlp.c_proj.bias", "h.11.mlp.c_proj.bias"),
        ("h.2.ln_2.weight", "h.2.ln_2.weight"),
        ("lm_head.weight", "lm_head.weight"),
        ("transformer.h.0.attn.bias", "h.0.attn.bias"),
        ("optimizer/step", None),
    ],
)
def test_canonical_names(raw, canonical):
    assert canonical_name(raw) == canonical


def test_small_shape_has_148_tensors():
    from tfdialogpt import DialoGPTConfig

    assert len(expected_shapes(DialoGPTConfig.preset("small"))) == 148


def copy_h5(src, dst, rename=lambda name: name, drop=(), add=None, reshape=None):
    """Rewrites a HF h5 checkpoint dataset by dataset (names, drops, additions)."""
    with h5py.File(src, "r") as fin, h5py.File(dst, "w") as fout:
        for key, value in fin.attrs.items():
            fout.attrs[key] = value
        names = []

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                names.append(name)

        fin.visititems(visit)
        for name in names:
            if any(d in name for d in drop):
                continue
            data = fin[name][()]
            if reshape and reshape[0] in name:
                data = np.resize(data, reshape[1])
            fout.create_dataset(rename(name), data=data)
        if add:
            fout.create_dataset(add[0], data=add[1])


def test_hub_2020_layout_loads(tiny_reference, tmp_path, batch):
    """The hub's DialoGPT tf_model.h5 files: scope `tfgp_t2lm_head_model`, `wte/weight:0`."""
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(tiny_reference.path("tf_h5") / "config.json", old)

    def rename(name):
        name = name.replace("tfgpt2lm_head_model", "tfgp_t2lm_head_model")
        return name.replace("wte/embeddings:0", "wte/weight:0")

    copy_h5(tiny_reference.path("tf_h5") / "tf_model.h5", old / "tf_model.h5", rename=rename)
    with h5py.File(old / "tf_model.h5") as f:
        assert "transformer/tfgp_t2lm_head_model/transformer/wte/weight:0" in f
    ids, mask = batch
    ours = DialoGPT.from_pretrained(old)(ids, attention_mask=mask).numpy()
    assert masked_max_diff(ours, tiny_reference.pt_logits(ids, mask), mask) < 1e-4


def test_round_trip_through_transformers_tf(tiny_reference, tmp_path, batch):
    from transformers import TFGPT2LMHeadModel

    ids, mask = batch
    ours = DialoGPT.from_pretrained(tiny_reference.path("pt_safetensors"))
    ours.save_pretrained(tmp_path / "ours")
    assert sorted(os.listdir(tmp_path / "ours")) == ["config.json", "tf_model.h5"]
    theirs, info = TFGPT2LMHeadModel.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []}
    position_ids = np.maximum(np.cumsum(mask, 1) - 1, 0)
    their_logits = theirs(ids, attention_mask=mask, position_ids=position_ids).logits.numpy()
    our_logits = ours(ids, attention_mask=mask).numpy()
    assert masked_max_diff(their_logits, our_logits, mask) < 1e-5
    # ... and back: transformers saves, we load.
    theirs.save_pretrained(tmp_path / "back")
    again = DialoGPT.from_pretrained(tmp_path / "back")(ids, attention_mask=mask).numpy()
    assert masked_max_diff(again, our_logits, mask) < 1e-5


def test_round_trip_through_transformers_pytorch(tiny_reference, tmp_path, batch):
    import torch
    from transformers import GPT2LMHeadModel

    ids, mask = batch
    ours = DialoGPT.from_pretrained(tiny_reference.path("tf_h5"))
    ours.save_pretrained(tmp_path / "ours", safe_serialization=True)
    os.remove(tmp_path / "ours" / "tf_model.h5")
    theirs, info = GPT2LMHeadModel.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    position_ids = np.maximum(np.cumsum(mask, 1) - 1, 0)
    with torch.no_grad():
        their_logits = theirs.eval()(
            torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            position_ids=torch.tensor(position_ids, dtype=torch.long),
        ).logits.numpy()
    assert masked_max_diff(their_logits, ours(ids, attention_mask=mask).numpy(), mask) < 1e-5


def test_hub_id_offline_from_cache(tiny_reference, tmp_path, batch):
    """`from_pretrained("microsoft/DialoGPT-small")` with HF_HUB_OFFLINE=1 and a filled cache,
    in a fresh process so huggingface_hub reads the variable as users set it."""
    cache = tmp_path / "hub"
    src = tiny_reference.path("tf_h5_sharded")
    fill_hub_cache(cache, "microsoft/DialoGPT-small", [src / f for f in os.listdir(src)])
    ids, mask = batch
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "mask.npy", mask)
    script = textwrap.dedent(f"""
        import numpy as np
        from tfdialogpt import DialoGPT
        from tfdialogpt.checkpoint import CheckpointError
        model = DialoGPT.from_pretrained("microsoft/DialoGPT-small", cache_dir={str(cache)!r})
        ids, mask = np.load({str(tmp_path / "ids.npy")!r}), np.load({str(tmp_path / "mask.npy")!r})
        np.save({str(tmp_path / "out.npy")!r}, model(ids, attention_mask=mask).numpy())
        try:
            DialoGPT.from_pretrained("microsoft/DialoGPT-large", cache_dir={str(cache)!r})
        except CheckpointError as err:
            print("ERROR:", err)
        from tfdialogpt.checkpoint import load_config
        print("CONFIG:", load_config("microsoft/DialoGPT-small", cache_dir={str(cache)!r}) == model.config)
        try:
            load_config("microsoft/DialoGPT-large", cache_dir={str(cache)!r})
        except CheckpointError as err:
            print("CONFIG ERROR:", err)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = np.load(tmp_path / "out.npy")
    assert masked_max_diff(out, tiny_reference.pt_logits(ids, mask), mask) < 1e-4
    assert "ERROR: could not find config.json for 'microsoft/DialoGPT-large' in the local hub cache" in run.stdout
    assert "CONFIG: True" in run.stdout
    assert "CONFIG ERROR: could not find config.json for 'microsoft/DialoGPT-large'" in run.stdout


# ---- every bad-checkpoint case raises one clear error ------------------------------------------------


@pytest.fixture
def tf_dir(tiny_reference, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(tiny_reference.path("tf_h5"), d)
    return d


def test_missing_tensor(tf_dir):
    src = tf_dir / "tf_model.h5"
    copy_h5(src, tf_dir / "x.h5", drop=("h_._1/attn/c_proj/weight",))
    os.replace(tf_dir / "x.h5", src)
    with pytest.raises(CheckpointError, match=r"missing 1: `h\.1\.attn\.c_proj\.weight`") as err:
        DialoGPT.from_pretrained(tf_dir)
    assert "expected 28 tensors, found 27" in str(err.value)


def test_unexpected_tensor(tf_dir):
    src = tf_dir / "tf_model.h5"
    copy_h5(src, tf_dir / "x.h5", add=("transformer/tfgpt2lm_head_model/transformer/h_._2/ln_1/gamma:0", np.ones(32)))
    os.replace(tf_dir / "x.h5", src)
    with pytest.raises(CheckpointError, match=r"unexpected 1: `h\.2\.ln_1\.weight`"):
        DialoGPT.from_pretrained(tf_dir)


def test_not_a_gpt2_tensor(tf_dir):
    src = tf_dir / "tf_model.h5"
    copy_h5(src, tf_dir / "x.h5", add=("optimizer/iterations:0", np.ones(1)))
    os.replace(tf_dir / "x.h5", src)
    with pytest.raises(CheckpointError, match=r"unexpected tensor `optimizer/iterations:0`"):
        DialoGPT.from_pretrained(tf_dir)


def test_misshaped_tensor(tf_dir):
    src = tf_dir / "tf_model.h5"
    copy_h5(src, tf_dir / "x.h5", reshape=("h_._0/mlp/c_fc/weight", (32, 64)))
    os.replace(tf_dir / "x.h5", src)
    with pytest.raises(CheckpointError, match=r"`h\.0\.mlp\.c_fc\.weight` is \(32, 64\), expected \(32, 128\)"):
        DialoGPT.from_pretrained(tf_dir)


def test_config_that_does_not_match_the_weights(tf_dir):
    config = json.loads((tf_dir / "config.json").read_text())
    config["n_layer"] = 3
    config["n_embd"] = 48
    (tf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"does not match its config \(3 layers, hidden 48") as err:
        DialoGPT.from_pretrained(tf_dir)
    assert "missing 12: `h.2." in str(err.value) and "wrong shape:" in str(err.value)


def test_directory_without_checkpoint(tmp_path, tiny_reference):
    shutil.copy(tiny_reference.path("tf_h5") / "config.json", tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint in .*: expected one of model.safetensors"):
        DialoGPT.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="is not a checkpoint directory"):
        DialoGPT.from_pretrained(tmp_path / "nope")


@pytest.mark.parametrize("fmt, filename", [("tf_h5", "tf_model.h5"), ("pt_safetensors", "model.safetensors")])
def test_truncated_file(tiny_reference, tmp_path, fmt, filename):
    d = tmp_path / fmt
    shutil.copytree(tiny_reference.path(fmt), d)
    data = (d / filename).read_bytes()
    (d / filename).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"cannot read .*{filename}.*truncated"):
        DialoGPT.from_pretrained(d)


def test_missing_shard(tiny_reference, tmp_path):
    d = tmp_path / "sharded"
    shutil.copytree(tiny_reference.path("pt_sharded"), d)
    os.remove(d / "model-00002-of-00008.safetensors")
    with pytest.raises(CheckpointError, match="lists the shard model-00002-of-00008.safetensors"):
        DialoGPT.from_pretrained(d)


def test_load_config_reads_no_weights(tf_dir, tmp_path):
    """`load_config` (what a client of a served model needs) works without the weights."""
    expected = DialoGPT.from_pretrained(tf_dir).config
    os.remove(tf_dir / "tf_model.h5")
    assert load_config(tf_dir) == expected
    assert load_config("default").max_positions == DialoGPT.from_pretrained("default").config.max_positions
    with pytest.raises(CheckpointError, match="is not a checkpoint directory"):
        load_config(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_config(tmp_path / "empty")
    (tf_dir / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_config(tf_dir)


def test_bad_config_json(tf_dir):
    (tf_dir / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        DialoGPT.from_pretrained(tf_dir)
    (tf_dir / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="model_type 'bert'"):
        DialoGPT.from_pretrained(tf_dir)


def test_untied_lm_head_is_refused(tiny_reference, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = tmp_path / "untied"
    shutil.copytree(tiny_reference.path("pt_safetensors"), d)
    tensors = load_file(d / "model.safetensors")
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"] + 1
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="only a tied LM head"):
        DialoGPT.from_pretrained(d)
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"]
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    DialoGPT.from_pretrained(d)  # an explicit tied copy is fine


def test_every_format_reads_the_same_tensors(tiny_reference):
    from conftest import FORMATS

    first = None
    for fmt in FORMATS:
        path = tiny_reference.path(fmt)
        index = [f for f in os.listdir(path) if f.endswith(".index.json")]
        weights = [f for f in os.listdir(path) if f.endswith((".h5", ".safetensors"))]
        tensors = read_weights(path / (index[0] if index else weights[0]))
        tensors = {k: v.reshape(-1) for k, v in tensors.items()}
        if first is None:
            first = tensors
        assert tensors.keys() == first.keys(), fmt
        for k in first:
            np.testing.assert_array_equal(tensors[k], first[k])
