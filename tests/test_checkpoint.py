"""Checkpoint formats, strictness, hub resolution offline, and round trips with transformers."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

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
        # Keras numbers the scope (`_1`) when another HF TF model was built first in the session.
        name = re.sub(r"tfgpt2lm_head_model(_\d+)?", "tfgp_t2lm_head_model", name)
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


def test_float16_storage_loads_as_float32_here_and_in_transformers(tiny_reference, tmp_path, batch):
    from transformers import TFGPT2LMHeadModel

    ids, mask = batch
    ours = DialoGPT.from_pretrained(tiny_reference.path("pt_safetensors"))
    ours.save_pretrained(tmp_path / "half", weights_dtype="float16")
    with h5py.File(tmp_path / "half" / "tf_model.h5") as f:
        dtypes = set()
        f.visititems(lambda _, item: dtypes.add(item.dtype) if isinstance(item, h5py.Dataset) else None)
    assert dtypes == {np.dtype("float16")}
    loaded = DialoGPT.from_pretrained(tmp_path / "half")
    rounded = {v.path: v.numpy().astype(np.float16).astype(np.float32) for v in ours.weights}
    for variable in loaded.weights:
        assert variable.dtype == "float32"
        np.testing.assert_array_equal(variable.numpy(), rounded[variable.path])
    # transformers reads the same file into float32 weights with the same logits.
    theirs, info = TFGPT2LMHeadModel.from_pretrained(tmp_path / "half", output_loading_info=True)
    assert info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []}
    assert {w.dtype.name for w in theirs.weights} == {"float32"}
    position_ids = np.maximum(np.cumsum(mask, 1) - 1, 0)
    their_logits = theirs(ids, attention_mask=mask, position_ids=position_ids).logits.numpy()
    assert masked_max_diff(their_logits, loaded(ids, attention_mask=mask).numpy(), mask) < 1e-5
    with pytest.raises(ValueError, match="weights_dtype must be one of float32, float16"):
        ours.save_pretrained(tmp_path / "bad", weights_dtype="int8")


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


# ---- non-finite weights are refused, naming the tensor and its file ---------------------------------


def env_with_this_tree(**extra: str) -> dict[str, str]:
    """The environment for a subprocess that imports this checkout's tfdialogpt."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    return env


def poison(directory, fmt, raw_name, values):
    """Writes `values` (NaN/Inf) at the start of the tensor `raw_name` in place; returns the file
    holding it (the shard, for a sharded checkpoint)."""
    from safetensors.numpy import load_file, save_file

    if fmt == "tf_h5":
        path = directory / "tf_model.h5"
        with h5py.File(path, "r+") as f:
            names = []
            f.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) and raw_name in n else None)
            (name,) = names
            data = f[name][()]
            data.reshape(-1)[: len(values)] = values
            f[name][...] = data
        return path
    if fmt == "pt_sharded":
        index = json.loads((directory / "model.safetensors.index.json").read_text())
        path = directory / index["weight_map"][raw_name]
    else:
        path = directory / "model.safetensors"
    tensors = load_file(path)
    tensors[raw_name].reshape(-1)[: len(values)] = values
    save_file(tensors, path, metadata={"format": "pt"})
    return path


@pytest.mark.parametrize(
    "fmt, raw_name, values, canonical, count",
    [
        ("tf_h5", "wte/embeddings", [np.nan] * 3, "wte.weight", "3 non-finite values"),
        ("pt_safetensors", "transformer.h.1.attn.c_attn.bias", [np.inf], "h.1.attn.c_attn.bias", "1 non-finite value"),
        (
            "pt_sharded",
            "transformer.h.0.mlp.c_fc.weight",
            [-np.inf, np.nan],
            "h.0.mlp.c_fc.weight",
            "2 non-finite values",
        ),
    ],
)
def test_non_finite_tensor_is_refused(tiny_reference, tmp_path, fmt, raw_name, values, canonical, count):
    d = tmp_path / fmt
    shutil.copytree(tiny_reference.path(fmt), d)
    holder = poison(d, fmt, raw_name, values)
    expected = f"`{canonical}`: {count} (NaN/Inf) in {holder}"
    with pytest.raises(CheckpointError, match=re.escape(expected) + "$"):
        DialoGPT.from_pretrained(d)


def test_every_non_finite_tensor_is_listed(tf_dir):
    poison(tf_dir, "tf_h5", "ln_f/gamma", [np.inf, -np.inf])
    poison(tf_dir, "tf_h5", "h_._1/attn/c_proj/weight", [np.nan])
    path = tf_dir / "tf_model.h5"
    expected = (
        f"`h.1.attn.c_proj.weight`: 1 non-finite value (NaN/Inf) in {path}; "
        f"`ln_f.weight`: 2 non-finite values (NaN/Inf) in {path}"
    )
    with pytest.raises(CheckpointError, match=re.escape(expected) + "$"):
        DialoGPT.from_pretrained(tf_dir)


def test_non_finite_count_is_exact_across_slices():
    """The check reads big tensors in slices: values at both sides of a slice boundary count."""
    from tfdialogpt import DialoGPTConfig
    from tfdialogpt.checkpoint import check_weights

    config = DialoGPTConfig(vocab_size=70_000, max_positions=8, hidden_size=32, num_layers=1, num_heads=2)
    tensors = {name: np.zeros(shape, np.float32) for name, shape in expected_shapes(config).items()}
    wte = tensors["wte.weight"].reshape(-1)  # 2,240,000 values: more than two slices of 2**20
    for position in (0, 2**20 - 1, 2**20, 2**21 + 5, wte.size - 1):
        wte[position] = np.nan
    tensors["h.0.ln_1.bias"] = tensors["h.0.ln_1.bias"].astype(np.float16)
    tensors["h.0.ln_1.bias"][-1] = np.inf
    with pytest.raises(
        CheckpointError,
        match=r"^`h\.0\.ln_1\.bias`: 1 non-finite value \(NaN/Inf\) in mem; "
        r"`wte\.weight`: 5 non-finite values \(NaN/Inf\) in mem$",
    ):
        check_weights(tensors, config, "mem")
    tensors["h.0.ln_1.bias"][-1] = 65504  # float16's largest finite value
    wte[:] = 0
    assert check_weights(tensors, config, "mem").keys() == tensors.keys()


def test_cli_info_check_refuses_non_finite_weights(tf_dir):
    path = poison(tf_dir, "tf_h5", "wte/embeddings", [np.nan, np.inf, np.nan])
    run = subprocess.run(
        [sys.executable, "-m", "tfdialogpt", "info", "--model", str(tf_dir), "--check"],
        env=env_with_this_tree(TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr[-3000:]
    lines = [line for line in run.stderr.splitlines() if line.startswith("tfdialogpt")]
    assert lines == [f"tfdialogpt info: error: `wte.weight`: 3 non-finite values (NaN/Inf) in {path}"], run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""


# ---- hub resolution: one meaning of local_files_only ------------------------------------------------


@pytest.fixture
def offline_env(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 with an empty default hub cache under tmp_path; returns the cache."""
    from huggingface_hub import constants

    cache = tmp_path / "default-hub-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_local_files_only_with_an_empty_cache(tmp_path, hub_online):
    cache = tmp_path / "hub"
    expected = (
        f"could not find config.json for 'microsoft/DialoGPT-small' in the local hub cache {cache} "
        "(offline mode: local_files_only=True)"
    )
    with pytest.raises(CheckpointError, match=re.escape(expected) + "$"):
        DialoGPT.from_pretrained("microsoft/DialoGPT-small", cache_dir=cache, local_files_only=True)
    with pytest.raises(CheckpointError, match=re.escape(expected) + "$"):
        load_config("microsoft/DialoGPT-small", cache_dir=cache, local_files_only=True)


@pytest.mark.parametrize("local_files_only", [False, True])
def test_hf_hub_offline_with_an_empty_cache(offline_env, local_files_only):
    """HF_HUB_OFFLINE=1 makes the default `local_files_only=False` read the cache only."""
    reason = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE is set"
    expected = (
        f"could not find config.json for 'microsoft/DialoGPT-small' at revision 'v1' in the local hub "
        f"cache {offline_env} (offline mode: {reason})"
    )
    with pytest.raises(CheckpointError, match=re.escape(expected) + "$"):
        load_config("microsoft/DialoGPT-small", revision="v1", local_files_only=local_files_only)


def test_local_files_only_reads_a_filled_cache(tiny_reference, tmp_path, hub_online):
    cache = tmp_path / "hub"
    src = tiny_reference.path("pt_sharded")
    fill_hub_cache(cache, "someone/tiny", [src / f for f in os.listdir(src)])
    config = load_config("someone/tiny", cache_dir=cache, local_files_only=True)
    assert (config.num_layers, config.hidden_size, config.vocab_size) == (2, 32, 211)
    model = DialoGPT.from_pretrained("someone/tiny", cache_dir=cache, local_files_only=True)
    np.testing.assert_array_equal(model.wte.embeddings.numpy(), tiny_reference.pt.transformer.wte.weight.detach())
    snapshot = next((cache / "models--someone--tiny" / "snapshots").iterdir())
    os.remove(snapshot / "model-00003-of-00008.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"could not find shard model-00003-of-00008\.safetensors of "
        r"model\.safetensors\.index\.json for 'someone/tiny' in the local hub",
    ):
        DialoGPT.from_pretrained("someone/tiny", cache_dir=cache, local_files_only=True)


@pytest.mark.parametrize(
    "error, expected",
    [
        (
            "unreachable",
            r"^cannot fetch config\.json for 'microsoft/DialoGPT-small' on the hub: the hub is "
            r"unreachable and the file is not in the local cache \(no connection\)$",
        ),
        (
            "no repository",
            r"^no repository 'microsoft/DialoGPT-small' on the hub \(or it is private or gated and "
            r"no valid token was given\): 401 Client Error$",
        ),
        ("no revision", r"^no such revision: 'microsoft/DialoGPT-small' on the hub \(404 Client Error\)$"),
    ],
)
def test_hub_errors_are_checkpoint_errors(monkeypatch, tmp_path, hub_online, error, expected):
    import huggingface_hub
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    raised = {
        "unreachable": LocalEntryNotFoundError("no connection"),
        "no repository": RepositoryNotFoundError("401 Client Error\n\nRepository Not Found for url: ..."),
        "no revision": RevisionNotFoundError("404 Client Error\n\nRevision Not Found for url: ..."),
    }[error]

    def download(*args, **kwargs):
        raise raised

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(CheckpointError, match=expected):
        DialoGPT.from_pretrained("microsoft/DialoGPT-small", cache_dir=tmp_path)


def test_invalid_hub_id_and_local_files_only(tmp_path, hub_online):
    with pytest.raises(CheckpointError, match=r"^'not a repo' is neither a local directory nor a valid hub id: "):
        load_config("not a repo", cache_dir=tmp_path, local_files_only=True)
    with pytest.raises(TypeError, match="local_files_only must be True or False, got 'yes'"):
        load_config("microsoft/DialoGPT-small", cache_dir=tmp_path, local_files_only="yes")


def test_hub_module_loads_neither_tensorflow_nor_huggingface_hub():
    program = (
        "import sys, tfdialogpt.hub; "
        "loaded = [m for m in ('tensorflow', 'keras', 'huggingface_hub') if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    run = subprocess.run(
        [sys.executable, "-c", program], env=env_with_this_tree(), capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
