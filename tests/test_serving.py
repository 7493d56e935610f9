"""gRPC serving end to end over loopback: the server in a subprocess on a free port, requests
through the official `PredictionServiceStub` and through our `Client`; concurrency, a new
version mid-load, a corrupt version, a client leaving mid-request, bad requests, SIGTERM.

Every RPC has a timeout and every wait is bounded."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
import sys
import threading
import time
import types

import grpc
import numpy as np
import pytest
from serving_utils import (
    CAP,
    EOS,
    MODEL_NAME,
    WARMUP_LENGTHS,
    ServerProcess,
    bucket_pad,
    greedy_reference,
    left_pad,
    serve_limits,
)

from tfdialogpt.serving import signatures as contract
from tfdialogpt.serving.client import Client, InvalidRequestError, ModelNotFoundError
from tfdialogpt.serving.protos import apis, to_ndarray, to_tensor_proto
from tfdialogpt.serving.request_checks import check_inputs

RPC_TIMEOUT = 30.0


# ---- in-process units: the contract, the protos, the batcher -----------------------------------


def test_client_import_does_not_start_tensorflow():
    code = (
        "import sys; import tfdialogpt.serving.client as c; c.apis(); "
        "print(any(m.startswith('tensorflow.python') for m in sys.modules), 'tfdialogpt.model' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_errors_and_client_import_without_tensorflow():
    code = (
        "import sys; import tfdialogpt.serving.errors; import tfdialogpt.serving.client as c; c.apis(); "
        "print('tensorflow' in sys.modules, 'numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


def test_one_error_hierarchy_for_server_and_client():
    from tfdialogpt import serving
    from tfdialogpt.serving import client, errors

    for name in (
        "ServingError",
        "InvalidRequestError",
        "ModelNotFoundError",
        "ServerUnavailableError",
        "ResourceExhaustedError",
        "ServingTimeoutError",
    ):
        assert getattr(client, name) is getattr(errors, name) is getattr(serving, name)
    expected = {
        errors.InvalidRequestError: (grpc.StatusCode.INVALID_ARGUMENT, ValueError),
        errors.ModelNotFoundError: (grpc.StatusCode.NOT_FOUND, LookupError),
        errors.ServerUnavailableError: (grpc.StatusCode.UNAVAILABLE, ConnectionError),
        errors.ResourceExhaustedError: (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ServerUnavailableError),
        errors.ServingTimeoutError: (grpc.StatusCode.DEADLINE_EXCEEDED, TimeoutError),
    }
    for cls, (code, base) in expected.items():
        err = cls("what went wrong")
        assert (err.code, err.details, str(err)) == (code, "what went wrong", "what went wrong")
        assert isinstance(err, errors.ServingError) and isinstance(err, base)
    err = errors.ServingError("Predict failed with INTERNAL: boom", grpc.StatusCode.INTERNAL, "boom")
    assert (err.code, err.details) == (grpc.StatusCode.INTERNAL, "boom")
    assert errors.ServingError("x").code == grpc.StatusCode.UNKNOWN


class _AbortingContext:
    def abort(self, code, details):
        self.aborted = (code, details)
        raise RuntimeError("aborted")  # grpc's abort raises too


def test_services_answer_a_serving_error_with_its_code_and_message():
    from tfdialogpt.serving.errors import ModelNotFoundError, ResourceExhaustedError, ServingError
    from tfdialogpt.serving.grpc_services import _answer
    from tfdialogpt.serving.metrics import ServerMetrics
    from tfdialogpt.serving.protos import apis

    servicer = types.SimpleNamespace(server=types.SimpleNamespace(metrics=ServerMetrics(lambda: {})))
    request = apis().predict_pb2.PredictRequest()
    request.model_spec.name = "no-such-model"

    for err, expected in (
        (ModelNotFoundError("model 'x' not found"), (grpc.StatusCode.NOT_FOUND, "model 'x' not found")),
        (
            ResourceExhaustedError("9 requests are queued"),
            (grpc.StatusCode.RESOURCE_EXHAUSTED, "9 requests are queued"),
        ),
        (
            ServingError("signature 'g' failed: boom", grpc.StatusCode.INTERNAL),
            (grpc.StatusCode.INTERNAL, "signature 'g' failed: boom"),
        ),
        (KeyError("bug"), (grpc.StatusCode.INTERNAL, "KeyError: 'bug'")),
    ):

        def method(self, request, context, err=err):
            raise err

        context = _AbortingContext()
        with pytest.raises(RuntimeError, match="aborted"):
            _answer("predict")(method)(servicer, request, context)
        assert context.aborted == expected
    # Each answer is counted by its status; a name the server does not serve gets no label of its own.
    from prometheus_client.parser import text_string_to_metric_families

    page = servicer.server.metrics.exposition().decode()
    counted = {
        (sample.labels["model"], sample.labels["signature"], sample.labels["status"]): sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
        if sample.name == "tfdialogpt_requests_total"
    }
    assert counted == {
        ("<unknown>", "<unknown>", "NOT_FOUND"): 1.0,
        ("<unknown>", "<unknown>", "RESOURCE_EXHAUSTED"): 1.0,
        ("<unknown>", "<unknown>", "INTERNAL"): 2.0,
    }
    assert "no-such-model" not in page


def test_batcher_refuses_when_full_or_stopping():
    from tfdialogpt.serving.batching import Batcher, _Task
    from tfdialogpt.serving.errors import ResourceExhaustedError, ServerUnavailableError

    batcher = Batcher(max_batch_size=4, num_threads=0, max_queued=1)  # no worker: the queue fills
    batcher.submit(_Task(None, "generate", {}, None, 1))
    with pytest.raises(ResourceExhaustedError, match=r"1 requests are queued \(max_queued=1\)") as err:
        batcher.submit(_Task(None, "generate", {}, None, 1))
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    batcher.stop()
    with pytest.raises(ServerUnavailableError, match="shutting down") as err:
        batcher.submit(_Task(None, "generate", {}, None, 1))
    assert err.value.code == grpc.StatusCode.UNAVAILABLE


def test_one_data_type_table_matches_tensorflow():
    import tensorflow as tf

    from tfdialogpt.serving.protos import DATA_TYPES, DTYPE_ENUMS, DTYPE_NAMES, dtype_name

    assert contract.DTYPE_ENUMS is DTYPE_ENUMS and contract.DTYPE_NAMES is DTYPE_NAMES
    for enum, (name, dtype, _field) in DATA_TYPES.items():
        assert apis().types_pb2.DataType.Name(enum) == name == dtype_name(enum)
        assert np.dtype(tf.dtypes.as_dtype(enum).as_numpy_dtype) == dtype
        assert DTYPE_ENUMS[dtype.name] == enum == tf.dtypes.as_dtype(dtype).as_datatype_enum
    assert dtype_name(7) == "DT_STRING" and dtype_name(8) == "DT_COMPLEX64"  # outside the table: TF's own name
    names = {"float32": "FLOAT", "int32": "INT32", "int64": "INT64", "bool": "BOOL", "string": "STRING"}
    for sig in contract.SIGNATURES.values():
        for spec in sig.inputs + sig.outputs:
            assert spec.dtype_enum == tf.dtypes.as_dtype(spec.dtype).as_datatype_enum
            assert spec.dtype_name == "DT_" + names[spec.dtype]


def test_tensor_protos_round_trip_and_match_tensorflow():
    import tensorflow as tf

    for array in (
        np.arange(6, dtype=np.int32).reshape(2, 3),
        np.float32(0.5),
        np.int64(-7),
        np.zeros((0, 4), np.int32),
    ):
        proto = to_tensor_proto(array)
        np.testing.assert_array_equal(tf.make_ndarray(proto), array)
        back = to_ndarray(tf.make_tensor_proto(array))
        assert back.dtype == array.dtype and np.array_equal(back, array)
    assert to_ndarray(tf.make_tensor_proto(np.full((2, 2), 3, np.int32))).tolist() == [[3, 3], [3, 3]]
    # Strings: object arrays of bytes both ways; str is sent as UTF-8; TF's own protos read back.
    texts = np.array([["Hello", ""], ["ünï 🎉", "a\x00b"]], object)
    proto = to_tensor_proto(texts)
    back = to_ndarray(proto)
    assert back.dtype == object and back.tolist() == [[b"Hello", b""], ["ünï 🎉".encode(), b"a\x00b"]]
    assert tf.make_ndarray(proto).tolist() == back.tolist()
    assert to_ndarray(tf.make_tensor_proto([[b"\xff\xfe"]])).tolist() == [[b"\xff\xfe"]]  # bytes pass as they are
    with pytest.raises(ValueError, match="no UTF-8 form"):
        to_tensor_proto(np.array(["bad \ud800"], object))
    with pytest.raises(TypeError, match="holds a int"):
        to_tensor_proto(np.array([b"ok", 3], object))


LIMITS = serve_limits()


def _generate_inputs(**changes):
    ids, mask = left_pad([[1, 2, 3]], 4)
    inputs = {"input_ids": ids, "attention_mask": mask, **contract.setting_inputs({"max_new_tokens": 8})}
    inputs.update(changes)
    return inputs


# (what is wrong, the inputs, a piece of the expected message) for the contract's checks.
BAD_INPUTS = [
    (
        "missing input",
        lambda i: {k: v for k, v in i.items() if k != "attention_mask"},
        "missing input 'attention_mask'",
    ),
    ("unexpected input", lambda i: {**i, "beam": np.int32(2)}, "unexpected input 'beam'"),
    (
        "wrong dtype",
        lambda i: {**i, "input_ids": i["input_ids"].astype(np.float32)},
        "has dtype DT_FLOAT; signature 'generate' expects DT_INT32",
    ),
    ("wrong rank", lambda i: {**i, "input_ids": i["input_ids"][0]}, "input 'input_ids' has shape [4]"),
    ("a value per row", lambda i: {**i, "top_k": np.array([1, 2], np.int32)}, "'top_k' has shape [2]; expected [1]"),
    ("scalar setting", lambda i: {**i, "top_k": np.int32(1)}, "input 'top_k' has shape []; signature 'generate'"),
    ("mask shape", lambda i: {**i, "attention_mask": np.ones((1, 3), np.int32)}, "must equal input_ids' shape [1, 4]"),
    (
        "id out of vocab",
        lambda i: {**i, "input_ids": np.array([[1, 2, 3, 257]], np.int32)},
        "input_ids[0, 3] = 257 is out of range",
    ),
    ("right padding", lambda i: {**i, "attention_mask": np.array([[1, 1, 1, 0]], np.int32)}, "must be left-padded"),
    ("mask values", lambda i: {**i, "attention_mask": np.array([[0, 2, 1, 1]], np.int32)}, "masks hold only 0 and 1"),
    (
        "max_new_tokens 0",
        lambda i: {**i, "max_new_tokens": np.int32([0])},
        "max_new_tokens=0 is out of range; expected a value in [1, 16]",
    ),
    (
        "max_new_tokens over cap",
        lambda i: {**i, "max_new_tokens": np.int32([CAP + 1])},
        "max_new_tokens=17 is out of range",
    ),
    ("temperature", lambda i: {**i, "temperature": np.float32([-1])}, "temperature=-1 is out of range"),
    ("top_p", lambda i: {**i, "top_p": np.float32([1.5])}, "top_p=1.5 is out of range; expected a value in (0, 1]"),
    ("top_k", lambda i: {**i, "top_k": np.int32([300])}, "top_k=300 is out of range"),
    (
        "repetition_penalty",
        lambda i: {**i, "repetition_penalty": np.float32([0])},
        "repetition_penalty=0 is out of range",
    ),
    ("nan", lambda i: {**i, "temperature": np.float32(["nan"])}, "temperature=nan is out of range"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_contract_names_the_problem(case):
    _, change, message = case
    with pytest.raises(contract.ContractError) as err:
        check_inputs(contract.GENERATE, change(_generate_inputs()), LIMITS)
    assert message in str(err.value)


def test_contract_accepts_a_good_request_and_checks_positions():
    check_inputs(contract.GENERATE, _generate_inputs(), LIMITS)
    ids, mask = left_pad([[1] * 90])
    with pytest.raises(contract.ContractError, match="exceeds the model's 96 positions"):
        check_inputs(contract.GENERATE, _generate_inputs(input_ids=ids, attention_mask=mask), LIMITS)


def test_client_pads_prompts_as_model_generate_does():
    from tfdialogpt.generation import buckets

    assert contract.PROMPT_BUCKETS == buckets.PROMPT_BUCKETS
    assert contract.NEW_TOKEN_BUCKETS == buckets.NEW_TOKEN_BUCKETS
    for length in (1, 15, 16, 17, 100, 900, 1000, 1010):
        for new in (1, 8, 20, 64):
            if length + new <= 1024:
                assert contract.padded_length(length, new, 1024) == buckets.bucket_shapes(length, new, 1024)[0]


class _FakeServable:
    """Each row's answer: its last prompt token + 1, max_new_tokens times (the run's widest)."""

    version = 1
    limits = LIMITS

    def __init__(self):
        self.runs = []  # (rows, prompt width) of each run
        self.lock = threading.Lock()

    def run(self, name, inputs, control=None):
        time.sleep(0.01)
        ids, new = inputs["input_ids"], inputs["max_new_tokens"]
        with self.lock:
            self.runs.append(ids.shape)
        assert new.shape == (len(ids),), "settings reach the graph one per row"
        sequences = np.repeat(ids[:, -1:] + 1, new.max(), axis=1)
        return {"sequences": sequences, "lengths": new.copy()}


def test_batcher_merges_requests_whatever_their_settings_and_lengths():
    from tfdialogpt.serving.batching import Batcher, _Task, batch_key

    servable = _FakeServable()
    batcher = Batcher(max_batch_size=4, batch_timeout=0.05, num_threads=1)
    try:
        tasks = []
        for i in range(8):
            ids, mask = left_pad([[i + 1] * (3 + i)])  # widths 3 .. 10: one bucket (16)
            settings = {"max_new_tokens": 2 + i, "do_sample": i % 2 == 1, "seed": i, "top_k": i}
            inputs = {"input_ids": ids, "attention_mask": mask, **contract.setting_inputs(settings)}
            tasks.append(_Task(servable, "generate", inputs, batch_key(servable, contract.GENERATE, inputs), 1))
        futures = [batcher.submit(task) for task in tasks]
        results = [f.result(timeout=RPC_TIMEOUT) for f in futures]
    finally:
        batcher.stop()
    for i, result in enumerate(results):
        assert result["sequences"].tolist() == [[i + 2] * (2 + i)], "its own rows and max_new_tokens columns"
        assert result["lengths"].tolist() == [2 + i]
    # Greedy and sampled, short and long: runs of 4 rows, every prompt padded to the bucket.
    assert servable.runs == [(4, 16), (4, 16)]


def test_merging_pads_chat_score_and_rows():
    from tfdialogpt.serving import merging

    chat = [
        {"turns": np.array([[b"Hi", b""]], object), **contract.setting_inputs({"max_new_tokens": 3})},
        {"turns": np.array([[b"a", b"b", b"c"], [b"d", b"", b""]], object), **contract.setting_inputs({}, 2)},
    ]
    run = merging.merge("chat_xla", chat, LIMITS, pad_rows=True, allowed_batch_sizes=(1, 2, 4, 8))
    assert run.inputs["turns"].tolist() == [[b"Hi", b"", b""], [b"a", b"b", b"c"], [b"d", b"", b""], [b"Hi", b"", b""]]
    assert run.inputs["max_new_tokens"].tolist() == [3, 40, 40, 1]  # the filler row stops after one token
    assert run.spans == [(0, 1), (1, 3)] and run.widths == [3, 40]
    outputs = {"reply": np.array([b"x", b"y", b"z", b"w"], object), "sequences": np.zeros((4, 40), np.int32)}
    first, second = run.split(outputs)
    assert first["reply"].tolist() == [b"x"] and first["sequences"].shape == (1, 3)
    assert second["reply"].tolist() == [b"y", b"z"] and second["sequences"].shape == (2, 40)
    score = [
        {
            "input_ids": np.array([[1, 2]], np.int32),
            "attention_mask": np.ones((1, 2), np.int32),
            "target_mask": np.array([[0, 1]], np.int32),
        },
        {
            "input_ids": np.array([[3, 4, 5]], np.int32),
            "attention_mask": np.ones((1, 3), np.int32),
            "target_mask": np.array([[0, 1, 1]], np.int32),
        },
    ]
    run = merging.merge("score", score, LIMITS)
    assert run.inputs["input_ids"].tolist() == [[1, 2, EOS], [3, 4, 5]]
    assert run.inputs["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert run.inputs["target_mask"].tolist() == [[0, 1, 0], [0, 1, 1]]
    assert [merging.row_bucket(n, (1, 2, 4, 8)) for n in (1, 3, 5, 8, 9, 33)] == [1, 4, 8, 8, 16, 64]
    for bad in ((2, 1, 8), (1, 2, 4), (0, 8)):
        with pytest.raises(ValueError, match="allowed_batch_sizes"):
            merging.check_allowed_batch_sizes(bad, 8)


# ---- end to end through a server subprocess ---------------------------------------------------


@pytest.fixture(scope="module")
def models(serving_models):
    return {1: serving_models[0], 2: serving_models[1]}


@pytest.fixture(scope="module")
def tokenizer(serving_tokenizer):
    return serving_tokenizer


@pytest.fixture(scope="module")
def base(shared_export, tmp_path_factory):
    base = tmp_path_factory.mktemp("models") / MODEL_NAME
    shutil.copytree(shared_export.path, base / "1")
    return base


@pytest.fixture(scope="module")
def server(base, tmp_path_factory):
    proc = ServerProcess(base, tmp_path_factory.mktemp("logs") / "server.log")
    try:
        proc.wait_for_version(1)
        yield proc
    finally:
        proc.terminate()


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.target)
    yield apis().prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def _client(server, tokenizer=None, **kwargs) -> Client:
    return Client(
        server.target,
        MODEL_NAME,
        tokenizer=tokenizer,
        timeout=RPC_TIMEOUT,
        max_positions=96,
        eos_token_id=EOS,
        **kwargs,
    )


PROMPTS = [[5, 9, 33, 71, EOS], [120, EOS, 7, 8, 200, 14, 3, EOS], [42, EOS], [66, 67, 68, EOS], [1, EOS, 2, EOS]]


def _request(ids, mask, signature="generate", max_new_tokens=10, name=MODEL_NAME, **changes):
    import tensorflow as tf

    request = apis().predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    values = {"input_ids": ids, "attention_mask": mask}
    values.update(contract.setting_inputs({"max_new_tokens": max_new_tokens}, len(ids)))  # one per row
    for key, value in changes.items():  # a number is widened to one per row; an array is sent as it is
        if isinstance(value, np.generic):  # before the numbers: np.float64 is a float
            value = np.atleast_1d(value)
        elif isinstance(value, (bool, int, float)):
            value = np.full(len(ids), value, contract.PARAMETERS[key].spec.np_dtype)
        values[key] = value
    for key, value in values.items():
        if value is not None:
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def test_official_stub_reply_equals_in_process_generate(server, stub, models):
    import tensorflow as tf

    ids, mask = bucket_pad(PROMPTS[:3], 10)
    response = stub.Predict(_request(ids, mask), timeout=RPC_TIMEOUT)
    assert (response.model_spec.name, response.model_spec.signature_name, response.model_spec.version.value) == (
        MODEL_NAME,
        "generate",
        1,
    )
    sequences, lengths = greedy_reference(models[1], PROMPTS[:3], 10)
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["sequences"]), sequences)
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["lengths"]), lengths)


def test_official_stub_chats_by_default_with_string_tensors(server, stub, models, tokenizer):
    """A request naming no signature gets serving_default, the chat with the export's default
    settings: text in, text out, `turns` its only input."""
    import tensorflow as tf

    from tfdialogpt.chat import Chat

    histories = [["Hi!", "How are you?"], ["Hello", "", ""]]
    request = apis().predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    width = max(len(h) for h in histories)
    request.inputs["turns"].CopyFrom(tf.make_tensor_proto([h + [""] * (width - len(h)) for h in histories]))
    response = stub.Predict(request, timeout=RPC_TIMEOUT)
    assert response.model_spec.signature_name == "serving_default"
    replies = [r.decode() for r in tf.make_ndarray(response.outputs["reply"]).tolist()]
    # The export's default max_new_tokens: GenerationConfig's 40, cut to the export's cap.
    expected = [
        Chat(models[1], tokenizer, history=h[:-1], max_new_tokens=CAP).reply(h[-1]) for h in (histories[0], ["Hello"])
    ]
    assert replies == expected
    assert tf.make_ndarray(response.outputs["sequences"]).shape == (2, CAP)


def test_client_generate_reply_and_score(server, models, tokenizer):
    with _client(server, tokenizer) as client:
        out = client.generate(PROMPTS[:3], max_new_tokens=10)
        sequences, lengths = greedy_reference(models[1], PROMPTS[:3], 10)
        np.testing.assert_array_equal(out.sequences, sequences)
        np.testing.assert_array_equal(out.lengths, lengths)
        assert out.model_spec == type(out.model_spec)(MODEL_NAME, 1, "generate")

        history = ["Hi!", "How are you?"]
        prompt = tokenizer.encode_dialogue(history)
        expected, expected_lengths = greedy_reference(models[1], [prompt], 12)
        row = expected[0, : expected_lengths[0]].tolist()
        row = row[: row.index(EOS)] if EOS in row else row
        assert client.reply(history, max_new_tokens=12) == tokenizer.decode(row, skip_special_tokens=True).strip()
        assert client.generate_ids([prompt], max_new_tokens=12) == [row]

        from tfdialogpt.scoring import score

        scores = client.score([[5, 9, EOS], [42, EOS]], [[33, 71, EOS], [7]])
        expected_scores = score(models[1], [[5, 9, EOS], [42, EOS]], [[33, 71, EOS], [7]], pad_id=EOS)
        np.testing.assert_allclose(scores.log_probs, expected_scores, rtol=1e-5, atol=1e-4)
        assert scores.num_tokens.tolist() == [3, 1] and scores.model_spec.signature == "score"

        # Sampling is reproducible under a seed (and runs through the same signature).
        first = client.generate(PROMPTS[:2], max_new_tokens=8, do_sample=True, top_k=20, seed=7)
        again = client.generate(PROMPTS[:2], max_new_tokens=8, do_sample=True, top_k=20, seed=7)
        np.testing.assert_array_equal(first.sequences, again.sequences)


def test_client_is_a_chat_backend(server, models, tokenizer):
    from tfdialogpt.chat import Chat

    with _client(server, tokenizer) as client:
        served, local = Chat(client, tokenizer, max_new_tokens=10), Chat(models[1], tokenizer, max_new_tokens=10)
        assert served.reply("Hello there") == local.reply("Hello there")
        assert served.history == local.history
        with pytest.raises(ValueError, match="num_beams=2 is not served"):
            Chat(client, tokenizer, max_new_tokens=10, num_beams=2).reply("Hi")


def test_mmi_against_a_served_reverse_model(server, models, tokenizer):
    """MMI reranking scores with the served export's `score` signature as with the local model."""
    from tfdialogpt.chat import MMI

    candidates = [[5, 9, 33], [42], [120, 7, 8]]
    source = [66, 67, EOS]
    with _client(server, tokenizer) as client:
        served, local = MMI(client, num_candidates=3), MMI(models[1], num_candidates=3)
        np.testing.assert_allclose(
            served.scores(source, candidates, EOS), local.scores(source, candidates, EOS), rtol=1e-5, atol=1e-4
        )
        assert served.pick(served.scores(source, candidates, EOS)) == local.pick(local.scores(source, candidates, EOS))


def test_metadata_and_status(server):
    with _client(server) as client:
        spec, signature_defs = client.metadata()
        assert spec.name == MODEL_NAME and spec.version == 1
        assert set(contract.SIGNATURES) <= set(signature_defs)
        generate = signature_defs["generate_xla"]
        assert set(generate.inputs) == set(contract.GENERATE.input_names)
        assert generate.inputs["seed"].dtype == contract.PARAMETERS["seed"].spec.dtype_enum
        assert generate.method_name == contract.PREDICT_METHOD
        assert client.status() == {1: ("AVAILABLE", "")}


def _batch_rows(server, signature):
    """(runs, rows) of a signature so far, from the server's Prometheus metrics."""
    import urllib.request

    text = urllib.request.urlopen(server.rest_url + "/monitoring/prometheus/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        for suffix in ("_count", "_sum"):
            if line.startswith(f"tfdialogpt_batch_rows{suffix}{{") and f'signature="{signature}"' in line:
                values[suffix] = float(line.rsplit(" ", 1)[1])
    return values.get("_count", 0.0), values.get("_sum", 0.0)


def test_eight_concurrent_clients_get_the_single_client_answers(server):
    """Mixed prompt lengths, greedy and seeded sampling, different max_new_tokens: merged into
    shared runs, every answer equals the same request sent alone."""
    prompts = [PROMPTS[i % len(PROMPTS)] * (1 + i % 3) + [10 + i, EOS] for i in range(16)]
    settings = [
        {"max_new_tokens": 4 + i % 7, **({"do_sample": True, "seed": 100 + i, "top_k": 30} if i % 2 else {})}
        for i in range(16)
    ]
    with _client(server) as client:
        single = [client.generate([p], **s).sequences[0].tolist() for p, s in zip(prompts, settings, strict=True)]
    runs_before, rows_before = _batch_rows(server, "generate")

    def worker(offset):
        with _client(server) as client:  # one channel per client, as separate processes would
            return [
                (i, client.generate([prompts[i]], **settings[i]).sequences[0].tolist()) for i in range(offset, 16, 8)
            ]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = [pair for chunk in pool.map(worker, range(8), timeout=120) for pair in chunk]
    assert len(answers) == 16
    for i, sequence in answers:
        assert sequence == single[i], f"prompt {i} ({settings[i]})"
    runs, rows = (a - b for a, b in zip(_batch_rows(server, "generate"), (runs_before, rows_before), strict=True))
    assert rows == 16 and runs < 16, f"concurrent requests must share runs ({runs:.0f} runs for 16 requests)"


def test_odd_prompt_widths_and_row_counts_reuse_the_compiled_buckets(server, stub, models):
    """A client cannot make generate_xla compile new shapes: the server pads prompts to the
    buckets and rows to the allowed batch sizes, and the answers stay model.generate's."""

    def ask(width, rows):
        batch = [PROMPTS[(width + r) % len(PROMPTS)] for r in range(rows)]
        ids, mask = left_pad(batch, width)
        response = stub.Predict(_request(ids, mask, signature="generate_xla", max_new_tokens=6), timeout=RPC_TIMEOUT)
        sequences, lengths = greedy_reference(models[1], batch, 6)
        np.testing.assert_array_equal(to_ndarray(response.outputs["sequences"]), sequences, err_msg=f"width {width}")
        np.testing.assert_array_equal(to_ndarray(response.outputs["lengths"]), lengths)

    for rows in (1, 2, 4):  # the buckets the odd requests below fall into: compiled once here
        ask(32, rows)
    before = _rss_mb(server.process.pid)
    for width, rows in ((17, 1), (19, 3), (23, 1), (29, 3), (31, 2), (20, 3), (18, 4), (25, 2), (27, 1), (21, 3)):
        ask(width, rows)
    grown = _rss_mb(server.process.pid) - before
    assert grown < 50, f"RSS grew {grown:.0f} MB over 10 odd shapes in compiled buckets"


BAD_REQUESTS = [
    # (case, request changes, status, a piece of the message)
    ("unknown model", dict(name="nope"), grpc.StatusCode.NOT_FOUND, "model 'nope' not found"),
    (
        "unknown signature",
        dict(signature="beam_search"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "signature 'beam_search' not found",
    ),
    ("missing input", dict(attention_mask=None), grpc.StatusCode.INVALID_ARGUMENT, "missing input 'attention_mask'"),
    (
        "wrong dtype",
        dict(temperature=np.float64(0)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "'temperature' has dtype DT_DOUBLE",
    ),
    ("wrong shape", dict(top_k=np.zeros(3, np.int32)), grpc.StatusCode.INVALID_ARGUMENT, "input 'top_k' has shape [3]"),
    (
        "scalar setting",
        dict(top_k=np.zeros((), np.int32)),  # a 0-d array is sent as it is
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'top_k' has shape []",
    ),
    (
        "max_new_tokens",
        dict(max_new_tokens=CAP + 5),
        grpc.StatusCode.INVALID_ARGUMENT,
        "max_new_tokens=21 is out of range",
    ),
    ("top_p", dict(top_p=np.float32(0)), grpc.StatusCode.INVALID_ARGUMENT, "top_p=0 is out of range"),
    (
        "token id",
        dict(input_ids=np.full((1, 4), 999, np.int32)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "= 999 is out of range",
    ),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_status_and_message(server, stub, case):
    _, changes, code, message = case
    ids, mask = left_pad([[1, 2, 3]], 4)
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(_request(ids, mask, **changes), timeout=RPC_TIMEOUT)
    assert err.value.code() == code
    assert message in err.value.details()
    assert server.process.poll() is None


BAD_CHATS = [
    ("no turn in a row", [["Hi"], [""]], "turns row 1 has no turn"),
    ("rank 1", ["Hi"], "expects string [batch, turns] (rank 2)"),
    # Found by the graph's own check (the server cannot tokenize): its words, not TF's node dump.
    ("newest turn too long", [["x" * 500]], "the newest turn with its EOS is longer than max_length"),
]


@pytest.mark.parametrize("case", BAD_CHATS, ids=[c[0] for c in BAD_CHATS])
def test_bad_chat_requests_get_a_clear_message(server, stub, case):
    _, turns, message = case
    request = apis().predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = MODEL_NAME, "chat"
    to_tensor_proto(np.array(turns, object), request.inputs["turns"])
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(request, timeout=RPC_TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()
    assert "Detected at node" not in err.value.details() and "stack trace" not in err.value.details()
    assert server.process.poll() is None


def test_bad_requests_through_the_client_and_other_services(server):
    with _client(server) as client, pytest.raises(InvalidRequestError, match="top_p=2 is out of range"):
        client.generate([[1, 2]], max_new_tokens=4, top_p=2.0)
    with Client(server.target, "nope", timeout=RPC_TIMEOUT) as client:
        with pytest.raises(ModelNotFoundError, match="model 'nope' not found"):
            client.status()
        with pytest.raises(ModelNotFoundError, match="model 'nope' not found"):
            client.metadata()
    with Client(server.target, MODEL_NAME, version=9, timeout=RPC_TIMEOUT) as client:
        with pytest.raises(ModelNotFoundError, match="version 9 of model 'dialogpt' is not being served"):
            client.generate([[1, 2]], max_new_tokens=2)
        with pytest.raises(ModelNotFoundError, match="version 9 of model 'dialogpt' was never seen"):
            client.status()


def test_client_leaving_mid_request_leaves_the_server_unaffected(server, stub, models):
    ids, mask = bucket_pad(PROMPTS * 8, CAP)  # 40 rows: long enough to be cut off
    future = stub.Predict.future(_request(ids, mask, max_new_tokens=CAP), timeout=RPC_TIMEOUT)
    future.cancel()
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(_request(ids, mask, max_new_tokens=CAP), timeout=0.001)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with _client(server) as client:
        out = client.generate(PROMPTS[:2], max_new_tokens=10)
    np.testing.assert_array_equal(out.sequences, greedy_reference(models[1], PROMPTS[:2], 10)[0])
    assert server.process.poll() is None


def test_new_version_mid_load_fails_no_request(server, base, models, tokenizer):
    """Requests keep flowing while version 2 is exported and picked up; none fails, and once
    version 2 answers, later requests get version 2's tokens."""
    from tfdialogpt.serving.export import export

    expected = {v: greedy_reference(models[v], PROMPTS[:1], 10)[0][0].tolist() for v in (1, 2)}
    assert expected[1] != expected[2]
    failures, answers = [], []
    stop = threading.Event()

    def load(worker):
        deadline = time.monotonic() + 180
        with _client(server) as client:
            # Bounded in count and time; ends once version 2 has answered a few times.
            for _ in range(5000):
                if time.monotonic() > deadline:
                    return
                try:
                    out = client.generate(PROMPTS[:1], max_new_tokens=10)
                    answers.append((time.monotonic(), out.model_spec.version, out.sequences[0].tolist()))
                except Exception as err:  # every failure is a test failure
                    failures.append(repr(err))
                if stop.is_set():
                    return
                time.sleep(0.02)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        export(models[2], base, max_new_tokens_cap=CAP, warmup_prompt_lengths=WARMUP_LENGTHS, tokenizer=tokenizer)
        server.wait_for_version(2)
        deadline = time.monotonic() + 60
        while sum(v == 2 for _, v, _ in answers) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
    assert failures == []
    assert {v for _, v, _ in answers} == {1, 2}, "requests must have run before and after the swap"
    for _, version, tokens in answers:
        assert tokens == expected[version]
    first_v2 = min(t for t, v, _ in answers if v == 2)
    assert all(v == 2 for t, v, _ in answers if t > first_v2 + 1.0), "after the swap, the new version answers"
    assert "unloaded version 1" in server.log() or _wait_for_log(server, "unloaded version 1")


def _wait_for_log(server, text, timeout=30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in server.log():
            return True
        time.sleep(0.1)
    return False


def test_corrupt_version_is_refused_and_the_old_one_keeps_serving(server, base, models):
    corrupt = base / "3"
    (corrupt / "variables").mkdir(parents=True)
    (corrupt / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    assert _wait_for_log(server, "refused version 3"), server.log()
    with _client(server) as client:
        status = client.status()
        assert status[3][0] == "END" and status[3][1], status
        assert status[2] == ("AVAILABLE", "")
        out = client.generate(PROMPTS[:1], max_new_tokens=10)
    assert out.model_spec.version == 2
    np.testing.assert_array_equal(out.sequences, greedy_reference(models[2], PROMPTS[:1], 10)[0])
    assert server.process.poll() is None


def test_deployment_configs_parse():
    """serving/models.config is a valid ModelServerConfig; the batching file is understood."""
    from tfdialogpt.serving.server_options import read_batching_parameters, read_model_config

    root = os.path.join(os.path.dirname(__file__), os.pardir, "serving")
    [model] = read_model_config(os.path.join(root, "models.config"))
    assert (model.name, model.base_path, model.num_versions) == ("dialogpt", "/models/dialogpt", 2)
    batching = read_batching_parameters(os.path.join(root, "batching_parameters.txt"))
    assert batching["max_batch_size"] == 8 and batching["allowed_batch_sizes"] == (1, 2, 4, 8)
    assert batching["pad_variable_length_inputs"] is False
    with open(os.path.join(root, "docker-compose.yml")) as f:
        compose = f.read()
    for flag in (
        "--enable_batching=true",
        "--batching_parameters_file=/config/batching_parameters.txt",
        "--xla_cpu_compilation_enabled=true",
        "--model_config_file=",
        "--monitoring_config_file=",
        '"8500:8500"',
        '"8501:8501"',
    ):
        assert flag in compose


def _rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


@pytest.mark.parametrize(
    "shape, message",
    [
        ((20000, 10000), "has 20000 rows; this server takes at most 64"),  # a 231-byte request, 800 MB declared
        ((1, 2_000_000), "declares shape [1, 2000000] (2000000 values)"),
    ],
)
def test_declared_shapes_are_refused_before_anything_is_allocated(server, stub, models, shape, message):
    request = _request(*left_pad([[5, EOS]]))
    for key in ("input_ids", "attention_mask"):  # the shape, and no values: decoding would fill it
        request.inputs[key].Clear()
        request.inputs[key].dtype = 3
        for size in shape:
            request.inputs[key].tensor_shape.dim.add(size=size)
    assert request.ByteSize() < 400
    before = _rss_mb(server.process.pid)
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(request, timeout=RPC_TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
    assert _rss_mb(server.process.pid) - before < 200
    response = stub.Predict(_request(*left_pad([[5, EOS]]), max_new_tokens=4), timeout=RPC_TIMEOUT)
    assert to_ndarray(response.outputs["lengths"]).shape == (1,)


def test_version_directories_are_ascii_numbers(tmp_path):
    from tfdialogpt.serving.export import next_version
    from tfdialogpt.serving.servables import ModelVersions

    for name in ("1", "²", "٣", "07x"):  # "²" and "٣" pass str.isdigit() and fail int()
        (tmp_path / name).mkdir()
    assert ModelVersions("m", str(tmp_path))._on_disk() == {1: str(tmp_path / "1")}
    assert next_version(tmp_path) == 2


def test_health_service_reports_the_served_models(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", MODEL_NAME):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=RPC_TIMEOUT)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_second_server_on_the_same_grpc_port_exits_with_a_message(server, tmp_path):
    command = [sys.executable, "-m", "tfdialogpt", "serve", "--model-base-path", str(tmp_path / "none")]
    command += ["--host", "127.0.0.1", "--port", str(server.port), "--rest-api-port", "0"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=RPC_TIMEOUT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"tfdialogpt serve: error: cannot listen on 127.0.0.1:{server.port} (gRPC): the address is in use or invalid"
    ], "our line only (gRPC's own log line of the failed bind is dropped)"
    assert "Traceback" not in proc.stderr
    with _client(server) as client:  # the first one alone answers, as before
        assert "AVAILABLE" in [state for state, _ in client.status().values()]


@pytest.mark.parametrize(
    "command", ["serve --model-base-path {file} --port 0 --rest-api-port 0", "export --base-path {file}"]
)
def test_serve_and_export_on_a_file_exit_2_with_one_line(tmp_path, command):
    path = tmp_path / "a-file.txt"
    path.write_text("not a model directory\n")
    args = [sys.executable, "-m", "tfdialogpt", *command.format(file=path).split()]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().count("\n") == 0 and "is a file" in proc.stderr, proc.stderr
    assert path.read_text() == "not a model directory\n"


# Last: it stops the module's server.
def test_sigterm_shuts_down_cleanly(server):
    """Runs last in this module: the server finishes and exits 0 on SIGTERM."""
    with _client(server) as client:
        pending = client._predict.Predict.future(
            _request(*bucket_pad(PROMPTS, CAP), max_new_tokens=CAP), timeout=RPC_TIMEOUT
        )
        time.sleep(0.05)
        assert server.terminate(timeout=60) == 0
        assert pending.result(timeout=RPC_TIMEOUT).model_spec.version.value == 2, "the request in flight is answered"
    log = server.log()
    assert "received SIGTERM" in log and log.rstrip().endswith("stopped"), log[-2000:]
    assert "Traceback" not in log, log


class _SlowServable(_FakeServable):
    """A `_FakeServable` whose runs take `seconds`, recording (start, rows) of each."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds, self.starts = seconds, []

    def run(self, name, inputs, control=None):
        with self.lock:
            self.starts.append((time.monotonic(), len(inputs["input_ids"])))
        time.sleep(self.seconds)
        return super().run(name, inputs, control)


def _generate_task(servable, token):
    from tfdialogpt.serving.batching import _Task, batch_key

    ids, mask = left_pad([[token] * 3])
    inputs = {"input_ids": ids, "attention_mask": mask, **contract.setting_inputs({"max_new_tokens": 2})}
    return _Task(servable, "generate", inputs, batch_key(servable, contract.GENERATE, inputs), 1)


def test_batcher_gathers_behind_a_running_run_instead_of_starting_a_half_full_one():
    """Two workers: requests that come while a run goes on wait for its end (and for the
    requests its client sends next) rather than start a second, half-full run beside it."""
    from tfdialogpt.serving.batching import Batcher

    servable = _SlowServable(0.4)
    batcher = Batcher(max_batch_size=4, batch_timeout=0.02, num_threads=2, rejoin_timeout=0.5)
    try:
        first = batcher.submit(_generate_task(servable, 1))
        time.sleep(0.15)  # the first run is going on
        waiting = [batcher.submit(_generate_task(servable, t)) for t in (2, 3)]
        first.result(timeout=RPC_TIMEOUT)
        time.sleep(0.1)  # a slow client: past batch_timeout, within rejoin_timeout
        again = batcher.submit(_generate_task(servable, 4))  # the first client's next request
        results = [f.result(timeout=RPC_TIMEOUT) for f in [*waiting, again]]
    finally:
        batcher.stop()
    assert [rows for _, rows in servable.starts] == [1, 3], "the late requests share one run"
    assert servable.starts[1][0] >= servable.starts[0][0] + 0.4, "and it started after the first"
    assert [r["sequences"].tolist() for r in results] == [[[3, 3]], [[4, 4]], [[5, 5]]]


def test_batcher_takes_a_burst_whole_and_full_runs_side_by_side():
    """Requests that keep coming within `batch_timeout` of each other join one run; a full run
    starts even while another is going on."""
    from tfdialogpt.serving.batching import Batcher

    servable = _SlowServable(0.4)
    batcher = Batcher(max_batch_size=3, batch_timeout=0.1, num_threads=2)
    try:
        futures = []
        for token in range(1, 4):  # 60 ms apart: past a fixed 100 ms window from the first
            futures.append(batcher.submit(_generate_task(servable, token)))
            time.sleep(0.06)
        futures += [batcher.submit(_generate_task(servable, t)) for t in range(4, 7)]
        results = [f.result(timeout=RPC_TIMEOUT) for f in futures]
    finally:
        batcher.stop()
    (start_a, rows_a), (start_b, rows_b) = servable.starts
    assert (rows_a, rows_b) == (3, 3) and start_b < start_a + 0.4, "the second full run did not wait"
    assert [r["sequences"].tolist()[0][0] for r in results] == [2, 3, 4, 5, 6, 7]
