"""SavedModel export: TF Serving's layout, the signatures of the contract, stock ops only,
warmup records, and a fresh TensorFlow-only process reproducing `model.generate` (greedy)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from serving_utils import (
    CAP,
    EOS,
    SERVE_CONFIG,
    WARMUP_LENGTHS,
    greedy_reference,
    left_pad,
    make_model,
)

from tfdialogpt.serving import signatures as contract
from tfdialogpt.serving.export import export, next_version, warmup_requests
from tfdialogpt.serving.protos import apis, to_ndarray
from tfdialogpt.serving.request_checks import check_inputs

PROMPTS = [[5, 9, 33, 71, EOS], [120, EOS, 7, 8, 200, 14, 3, EOS], [42, EOS]]


@pytest.fixture(scope="module")
def model(serving_models):
    return serving_models[0]


@pytest.fixture(scope="module")
def exported(shared_export):
    return shared_export


def test_layout_is_tf_serving_s(exported):
    base = os.path.dirname(exported.path)
    assert exported.version == 1 and exported.path == os.path.join(base, "1")
    assert os.listdir(base) == ["1"], "the staging directory must be renamed away"
    for name in ("saved_model.pb", "variables", "assets.extra"):
        assert os.path.exists(os.path.join(exported.path, name)), name
    assert next_version(base) == 2
    assert set(exported.signatures) == set(contract.SIGNATURES)
    with open(os.path.join(exported.path, "assets.extra", contract.METADATA_FILE)) as f:
        limits = contract.Limits.from_json_dict(json.load(f))
    assert limits == exported.limits
    assert (limits.max_new_tokens_cap, limits.vocab_size, limits.eos_token_id) == (CAP, 257, EOS)
    assert limits.cache_bytes_per_position == 2 * 2 * 32 * 4  # keys and values x layers x hidden x float32


def test_warmup_records_cover_each_bucket(exported):
    path = os.path.join(exported.path, "assets.extra", contract.WARMUP_FILE)
    logs = [apis().prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]
    seen = set()
    for entry in logs:
        request = entry.predict_log.request
        inputs = {key: to_ndarray(value) for key, value in request.inputs.items()}
        sig = contract.signature(request.model_spec.signature_name)
        if "turns" in inputs:  # the settings left out take the export's defaults
            assert set(inputs) == ({"turns"} if sig.name == "serving_default" else {"turns", "max_new_tokens"})
            turn = inputs["turns"][0, 0].decode()
            assert turn == "<|endoftext|>" * (turn.count("<|endoftext|>"))
            seen.add((sig.name, turn.count("<|endoftext|>") + 1))  # + the turn's closing EOS
            continue
        check_inputs(sig, inputs, exported.limits)  # every record is a valid request
        seen.add((sig.name, inputs["input_ids"].shape[1]))
    expected = {(name, n) for name in ("serving_default", "chat", "generate", "score") for n in WARMUP_LENGTHS}
    assert seen == expected and len(logs) == exported.warmup_records == len(expected)


def test_saved_model_cli_lists_the_signatures(exported):
    cli = shutil.which("saved_model_cli", path=os.path.dirname(sys.executable))
    assert cli, "saved_model_cli comes with tensorflow"
    out = subprocess.run([cli, "show", "--dir", exported.path, "--all"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in contract.SIGNATURES:
        assert f"signature_def['{name}']" in out.stdout
    section = out.stdout.split("signature_def['generate_xla']")[1].split("signature_def[")[0]
    for spec in contract.GENERATE.inputs + contract.GENERATE.outputs:
        assert f"['{spec.name}'] tensor_info" in section
    assert "dtype: DT_FLOAT" in section and "Method name is: tensorflow/serving/predict" in section


def assert_only_stock_ops(path) -> set[str]:
    """Every op of the SavedModel's graph and functions is a registered stock TF op; returns them."""
    saved_model = apis().saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    graph = saved_model.meta_graphs[0].graph_def
    ops = {node.op for node in graph.node}
    functions = {fn.signature.name for fn in graph.library.function}
    for fn in graph.library.function:
        ops |= {node.op for node in fn.node_def}
    ops -= functions  # calls of the graph's own functions
    from tensorflow.python.framework import op_def_registry

    assert not ops & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
    assert [op for op in sorted(ops) if op_def_registry.get(op) is None] == []
    assert any(fn.attr["_XlaMustCompile"].b for fn in graph.library.function), "generate_xla must be jit-compiled"
    return ops


def test_only_stock_ops(exported):
    assert_only_stock_ops(exported.path)


def test_int8_export_matches_the_int8_model(tmp_path, serving_tokenizer):
    """A quantized model exports with stock ops only, and its signatures (with and without XLA)
    give the quantized model's own greedy tokens."""
    quantized = make_model(seed=0)
    quantized.quantize("int8")
    result = export(
        quantized, tmp_path, max_new_tokens_cap=CAP, warmup_prompt_lengths=(16,), tokenizer=serving_tokenizer
    )
    assert "BatchMatMulV3" in assert_only_stock_ops(result.path)  # the int8 x int8 -> int32 matmul
    loaded = tf.saved_model.load(result.path)
    ids, mask = left_pad(PROMPTS)
    sequences, lengths = greedy_reference(quantized, PROMPTS, 10)
    params = contract.setting_inputs({"max_new_tokens": 10})  # one value for all rows
    for name in ("generate", "generate_xla"):
        out = loaded.signatures[name](input_ids=tf.constant(ids), attention_mask=tf.constant(mask), **params)
        np.testing.assert_array_equal(out["sequences"].numpy(), sequences, err_msg=name)
        np.testing.assert_array_equal(out["lengths"].numpy(), lengths, err_msg=name)
    with pytest.raises(ValueError, match="quantize the model object first"):
        export(make_model(seed=0), tmp_path, quantize="int8", tokenizer=serving_tokenizer)


FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the chat signatures' SentencePiece ops, linked by TF Serving)

    path, new = sys.argv[1], int(sys.argv[4])
    ids, mask = (np.array(json.loads(arg), np.int32) for arg in sys.argv[2:4])
    loaded = tf.saved_model.load(path)
    rows = len(ids)  # one value per row, as the batcher of TF Serving needs them
    params = dict(max_new_tokens=np.full(rows, new, np.int32), temperature=np.ones(rows, np.float32),
                  top_k=np.zeros(rows, np.int32), top_p=np.ones(rows, np.float32),
                  repetition_penalty=np.ones(rows, np.float32), seed=np.zeros(rows, np.int32),
                  do_sample=np.zeros(rows, np.bool_), no_repeat_ngram_size=np.zeros(rows, np.int32))
    result = {"tfdialogpt_imported": any(m.startswith("tfdialogpt") for m in sys.modules)}
    for name in ("generate", "generate_xla"):
        out = loaded.signatures[name](input_ids=tf.constant(ids), attention_mask=tf.constant(mask), **params)
        result[name] = [out["sequences"].numpy().tolist(), out["lengths"].numpy().tolist()]
    target = np.zeros_like(ids); target[:, -2:] = 1
    score = loaded.signatures["score"]
    result["score"] = score(input_ids=tf.constant(ids), attention_mask=tf.constant(np.ones_like(ids)),
                            target_mask=tf.constant(target))["log_probs"].numpy().tolist()
    try:
        bad = dict(params, top_p=np.full(rows, 1.5, np.float32))
        loaded.signatures["generate"](input_ids=tf.constant(ids), attention_mask=tf.constant(mask), **bad)
        result["bad_top_p"] = "accepted"
    except tf.errors.InvalidArgumentError as err:
        result["bad_top_p"] = err.message
    print("RESULT " + json.dumps(result))
""")


def test_fresh_tensorflow_only_process_matches_model_generate(model, exported, tmp_path):
    """Loads the export with nothing but TensorFlow (and TF Text): same greedy tokens as `model.generate`."""
    new = 10
    ids, mask = left_pad(PROMPTS)
    script = tmp_path / "load_export.py"
    script.write_text(FRESH_PROCESS)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, str(script), exported.path, json.dumps(ids.tolist()), json.dumps(mask.tolist()), str(new)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["tfdialogpt_imported"] is False

    sequences, lengths = greedy_reference(model, PROMPTS, new)
    assert sequences.shape == (3, new)
    for name in ("generate", "generate_xla"):
        np.testing.assert_array_equal(result[name][0], sequences, err_msg=name)
        np.testing.assert_array_equal(result[name][1], lengths, err_msg=name)

    from tfdialogpt.scoring import score_tensors

    target = np.zeros_like(ids)
    target[:, -2:] = 1
    expected = score_tensors(model, ids, np.ones_like(ids), target).numpy()
    np.testing.assert_allclose(result["score"], expected, rtol=1e-5, atol=1e-4)
    assert "top_p must be in (0, 1]" in result["bad_top_p"]


@pytest.mark.parametrize("name", ["generate", "generate_xla"])
def test_each_row_bans_repeated_ngrams_of_its_own_size(model, exported, name):
    """`no_repeat_ngram_size` is served one value per row: the rows of one request, asking for
    sizes 0 (off) to 4, each get in-process `model.generate`'s tokens for their size."""
    signature = tf.saved_model.load(exported.path).signatures[name]
    prompt, sizes = [5, 9, 33, 71, EOS], [0, 1, 2, 3, 4]
    ids, mask = left_pad([prompt] * len(sizes), 16)
    settings = contract.setting_inputs({"max_new_tokens": CAP, "no_repeat_ngram_size": sizes}, len(sizes))
    out = signature(input_ids=tf.constant(ids), attention_mask=tf.constant(mask), **settings)
    expected = [model.generate(np.array([prompt], np.int32), max_new_tokens=CAP, no_repeat_ngram_size=n) for n in sizes]
    for row, (n, alone) in enumerate(zip(sizes, expected, strict=True)):
        np.testing.assert_array_equal(out["sequences"][row], alone.sequences[0], err_msg=f"size {n}")
        assert int(out["lengths"][row]) == int(alone.lengths[0])
    assert len({tuple(row) for row in out["sequences"].numpy().tolist()}) > 2, "the sizes change the tokens"


def test_warmup_requests_skip_buckets_that_do_not_fit():
    limits = contract.Limits(
        vocab_size=257,
        max_positions=40,
        eos_token_id=EOS,
        pad_token_id=EOS,
        cache_bytes_per_position=512,
        max_new_tokens_cap=8,
        warmup_prompt_lengths=(16, 32, 64),
    )
    logs = warmup_requests(limits, ["generate"])
    assert [to_ndarray(e.predict_log.request.inputs["input_ids"]).shape for e in logs] == [(1, 16), (1, 32)]


def test_export_refuses_bad_settings(model, serving_tokenizer, tmp_path):
    (tmp_path / "3").mkdir()
    with pytest.raises(FileExistsError, match="version 3 already exists"):
        export(model, tmp_path, version=3, max_new_tokens_cap=CAP, tokenizer=serving_tokenizer)
    with pytest.raises(ValueError, match="max_new_tokens_cap must be in"):
        export(model, tmp_path, max_new_tokens_cap=SERVE_CONFIG.max_positions, tokenizer=serving_tokenizer)
    for name in ("generate_xla", "chat_xla", "nonsense"):
        with pytest.raises(ValueError, match="cannot warm up"):
            export(model, tmp_path, include_xla=False, warmup_signatures=[name], tokenizer=serving_tokenizer)
    with pytest.raises(ValueError, match="pass tokenizer="):
        export(model, tmp_path)  # a model object built in memory: no tokenizer beside it
    from tfdialogpt import Tokenizer

    with pytest.raises(ValueError, match="does not fit the model"):
        export(model, tmp_path, tokenizer=Tokenizer.from_pretrained("default"))  # 2048 ids, EOS 0
    assert sorted(os.listdir(tmp_path)) == ["3"], "nothing half-written may be left behind"


# (settings of one request) for the batch tests: greedy and seeded sampling, different lengths.
MIXED_SETTINGS = [
    {"max_new_tokens": 10},
    {"max_new_tokens": 6, "do_sample": True, "seed": 3, "top_k": 20},
    {"max_new_tokens": 12, "repetition_penalty": 1.3},
    {"max_new_tokens": CAP, "do_sample": True, "seed": 9, "temperature": 0.7, "top_p": 0.9},
]


def _tf_serving_batch(requests):
    """What TF Serving's batcher runs: every input concatenated along dimension 0, then the
    batch padded up to an allowed size with copies of the first row."""
    batch = {key: np.concatenate([r[key] for r in requests]) for key in requests[0]}
    return {key: np.concatenate([value, value[:1]]) for key, value in batch.items()}


@pytest.mark.parametrize("name", ["generate", "generate_xla", "chat", "chat_xla"])
def test_a_tf_serving_batch_gives_each_request_its_own_answer(exported, name):
    """Requests with different settings, concatenated as TF Serving's batcher does and run as
    one call, each get the answer they get alone: settings are one value per row and each
    sampled row draws from its own seed."""
    loaded = tf.saved_model.load(exported.path)
    signature = loaded.signatures[name]
    histories = [["Hello"], ["Hi!", "How are you?"], ["What is your name?"], ["a", "b", "c"]]
    prompts = [[5, 9, 33, 71, EOS], [120, EOS, 7, 8, 200, 14, 3, EOS], [42, EOS], [66, 67, 68, EOS]]
    requests = []
    for i, settings in enumerate(MIXED_SETTINGS):
        if name.startswith("chat"):  # a fixed number of turn slots, as the client sends them
            turns = np.full((1, 8), b"", object)
            turns[0, : len(histories[i])] = [t.encode() for t in histories[i]]
            inputs = {"turns": turns}
        else:  # every prompt padded to one bucket, as the client pads
            ids, mask = left_pad([prompts[i]], 16)
            inputs = {"input_ids": ids, "attention_mask": mask}
        requests.append({**inputs, **contract.setting_inputs(settings)})

    def call(inputs):
        return {
            key: value.numpy() for key, value in signature(**{k: tf.constant(v) for k, v in inputs.items()}).items()
        }

    alone = [call(request) for request in requests]
    together = call(_tf_serving_batch(requests))
    assert together["sequences"].shape == (len(requests) + 1, CAP)  # the batch's largest max_new_tokens
    for i, answer in enumerate(alone):
        width = MIXED_SETTINGS[i]["max_new_tokens"]
        assert answer["sequences"].shape == (1, width)
        np.testing.assert_array_equal(together["sequences"][i, :width], answer["sequences"][0], err_msg=f"row {i}")
        assert (together["sequences"][i, width:] == EOS).all(), "after its own max_new_tokens: padding"
        assert together["lengths"][i] == answer["lengths"][0] <= width
        if "reply" in answer:
            assert together["reply"][i] == answer["reply"][0]
    sampled = [i for i, s in enumerate(MIXED_SETTINGS) if s.get("do_sample")]
    reseeded = call({**requests[sampled[0]], "seed": np.array([4], np.int32)})
    assert reseeded["sequences"].tolist() != alone[sampled[0]]["sequences"].tolist(), "the seed matters"
