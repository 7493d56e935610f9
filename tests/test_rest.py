"""TF Serving's REST API in `tfdialogpt serve`, called with a plain HTTP client (`urllib`, not our
code): the JSON formats both ways, status and metadata, TF Serving's HTTP codes with an
`{"error"}` body for bad requests (the server staying up), the metrics page, the port bound
exclusively. Expected replies come from in-process `Chat` / `model.generate`."""

from __future__ import annotations

import json
import shutil
import socket
import urllib.error
import urllib.request

import numpy as np
import pytest
from serving_utils import CAP, EOS, MODEL_NAME, ServerProcess, greedy_reference

from tfdialogpt.serving import rest_json
from tfdialogpt.serving.rest_json import RestFormatError, format_predict_response, parse_predict_request

TIMEOUT = 120
STRING, INT32, FLOAT, BOOL = 7, 3, 1, 10


# ---- the JSON formats (no server) ----------------------------------------------------------------


def _parse(body, dtypes):
    return parse_predict_request(json.dumps(body).encode() if not isinstance(body, bytes) else body, lambda _: dtypes)


def test_row_and_columnar_requests_give_the_same_tensors():
    dtypes = {"turns": STRING, "top_k": INT32}
    row = _parse({"instances": [{"turns": ["a", "b"], "top_k": 3}, {"turns": ["c", ""], "top_k": 4}]}, dtypes)
    columnar = _parse({"inputs": {"turns": [["a", "b"], ["c", ""]], "top_k": [3, 4]}}, dtypes)
    assert (row.format, columnar.format) == ("row", "columnar")
    for request in (row, columnar):
        assert request.inputs["turns"].tolist() == [[b"a", b"b"], [b"c", b""]]
        assert request.inputs["top_k"].dtype == np.int32 and request.inputs["top_k"].tolist() == [3, 4]
    # One input: bare values in both formats; strings as base64 objects too.
    one = {"turns": STRING}
    bare = _parse({"instances": [["Hi"], [{"b64": "SGk="}]]}, one)
    assert bare.inputs["turns"].tolist() == [[b"Hi"], [b"Hi"]] and bare.signature_name == ""
    assert _parse({"signature_name": "chat", "inputs": [["x"]]}, one).signature_name == "chat"
    # Bytes that are not UTF-8 pass through unchanged, as TF Serving passes them on.
    raw = _parse(b'{"inputs": {"turns": [["a\xff\xfeb"]]}}', one)
    assert raw.inputs["turns"][0, 0] == b"a\xff\xfeb"


@pytest.mark.parametrize(
    "body, dtypes, message",
    [
        (b"", {"x": INT32}, "The document is empty"),
        (b'{"inputs": ', {"x": INT32}, "JSON Parse error"),
        (b"[1, 2]", {"x": INT32}, "Is not object"),
        (b"[" * 100_000, {"x": INT32}, "nested too deeply"),
        ({"inputs": [1], "instances": [1]}, {"x": INT32}, "expecting only one of 'inputs' or 'instances'"),
        ({"signature": "x"}, {"x": INT32}, "Missing 'inputs' or 'instances' key"),
        ({"signature_name": 3, "inputs": [1]}, {"x": INT32}, "'signature_name' key must be a string"),
        ({"instances": []}, {"x": INT32}, "No values in 'instances'"),
        ({"instances": {"x": 1}}, {"x": INT32}, "to be an list/array"),
        ({"instances": [1, 2]}, {"x": INT32, "y": INT32}, "instances is a plain list"),
        ({"instances": [{"x": 1}]}, {"x": INT32, "y": INT32}, "keys must be equal to: x,y"),
        ({"instances": [{"x": 1, "z": 2}]}, {"x": INT32}, "does not have named input: z"),
        ({"instances": [{"x": [1]}, {"x": [1, 2]}]}, {"x": INT32}, "Expecting shape [1] but got: [2]"),
        ({"instances": [{"x": 1}, [1]]}, {"x": INT32}, "Expecting object but got list at item 1"),
        ({"inputs": {"x": [1]}}, {"x": INT32, "y": INT32}, "Missing named input: y in 'inputs' object."),
        ({"inputs": {"x": [1], "q": 2}}, {"x": INT32}, "'inputs' names 'q', which is not an input"),
        ({"inputs": [1]}, {"x": INT32, "y": INT32}, "inputs is a plain value/list"),
        ({"inputs": [1.5]}, {"x": INT32}, "Type: Number is not of expected type: DT_INT32"),
        ({"inputs": [True]}, {"x": INT32}, "Type: True is not of expected type: DT_INT32"),
        ({"inputs": [2**31]}, {"x": INT32}, "is not of expected type: DT_INT32"),
        ({"inputs": 1}, {"x": BOOL}, "is not of expected type: DT_BOOL"),
        ({"inputs": "1"}, {"x": FLOAT}, "Type: String is not of expected type: DT_FLOAT"),
        ({"inputs": 1e39}, {"x": FLOAT}, "to float without loss of precision"),
        ({"inputs": 2**24}, {"x": FLOAT}, "to float without loss of precision"),
        ({"inputs": [[1]]}, {"x": STRING}, "is not of expected type: DT_STRING"),
        ({"inputs": [{"b64": "!!"}]}, {"x": STRING}, "Unable to base64 decode"),
        ({"inputs": [{"b64": "QQ==", "x": 1}]}, {"x": STRING}, "not formatted correctly for base64"),
        ({"inputs": [["a"], "b"]}, {"x": STRING}, "found at incorrect level"),
        ({"inputs": [["a"], ["b", "c"]]}, {"x": STRING}, "Encountered list at unexpected size: 2"),
        ({"inputs": [["\ud800"]]}, {"x": STRING}, "lone surrogate"),
    ],
)
def test_malformed_requests_name_the_problem(body, dtypes, message):
    with pytest.raises(RestFormatError) as err:
        _parse(body, dtypes)
    assert message in str(err.value)


def test_responses_in_the_request_format():
    outputs = {
        "reply": np.array([b"hi", "h\u00e9".encode()], object),
        "lengths": np.array([2, 3], np.int32),
        "score": np.array([0.2, -np.inf], np.float32),
        "raw_bytes": np.array([b"\xff", b"a"], object),
    }
    row = format_predict_response(outputs, rest_json.ROW)
    assert row == {
        "predictions": [
            {"reply": "hi", "lengths": 2, "score": 0.2, "raw_bytes": {"b64": "/w=="}},
            {"reply": "h\u00e9", "lengths": 3, "score": float("-inf"), "raw_bytes": {"b64": "YQ=="}},
        ]
    }
    columnar = format_predict_response(outputs, rest_json.COLUMNAR)
    assert columnar["outputs"]["score"] == [0.2, float("-inf")]  # float32 0.2 written as 0.2
    assert columnar["outputs"]["reply"] == ["hi", "h\u00e9"]
    # One output: its name is dropped, as TF Serving does.
    assert format_predict_response({"reply": outputs["reply"]}, rest_json.ROW) == {"predictions": ["hi", "h\u00e9"]}
    assert format_predict_response({"reply": outputs["reply"]}, rest_json.COLUMNAR) == {"outputs": ["hi", "h\u00e9"]}


def test_the_rest_port_is_bound_exclusively():
    import types

    from tfdialogpt.serving.metrics import ServerMetrics
    from tfdialogpt.serving.rest_api import RestServer

    fake = types.SimpleNamespace(metrics=ServerMetrics(lambda: {}))
    first = RestServer(fake, "127.0.0.1", 0).start()
    try:
        from tfdialogpt.serving.errors import ServingError

        with pytest.raises(ServingError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            RestServer(fake, "127.0.0.1", first.port).start()
        # The first one still answers.
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{first.port}/nothing", timeout=TIMEOUT)
        assert err.value.code == 404 and "error" in json.loads(err.value.read())
    finally:
        first.stop()


# ---- against a live server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(shared_export, tmp_path_factory):
    base = tmp_path_factory.mktemp("rest_models") / MODEL_NAME
    shutil.copytree(shared_export.path, base / "1")
    proc = ServerProcess(base, tmp_path_factory.mktemp("rest_logs") / "server.log")
    try:
        proc.wait_for_version(1)
        yield proc
    finally:
        assert proc.terminate() == 0, proc.log()


def http(server, method: str, path: str, body: bytes | str | dict | None = None):
    """(HTTP status, parsed JSON body) with nothing but urllib."""
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    request = urllib.request.Request(server.rest_url + path, data=body, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


PREDICT = f"/v1/models/{MODEL_NAME}:predict"


def test_chat_over_rest_equals_in_process_chat(server, serving_models, serving_tokenizer):
    from tfdialogpt.chat import Chat

    histories = [["Hi!", "How are you?"], ["Hello", ""]]
    expected = [
        Chat(serving_models[0], serving_tokenizer, history=h[:-1], max_new_tokens=CAP).reply(h[-1])
        for h in (histories[0], ["Hello"])
    ]
    # A curl user's request: no signature (serving_default), only the turns, either format.
    status, columnar = http(server, "POST", PREDICT, {"inputs": {"turns": histories}})
    assert status == 200 and columnar["outputs"]["reply"] == expected
    status, row = http(server, "POST", PREDICT, {"instances": histories})
    assert status == 200 and [p["reply"] for p in row["predictions"]] == expected
    assert [p["lengths"] for p in row["predictions"]] == columnar["outputs"]["lengths"]
    # The path matches case-insensitively and may name the version.
    status, again = http(server, "POST", f"/V1/Models/{MODEL_NAME}/versions/1:PREDICT", {"instances": [["Hello"]]})
    assert status == 200 and again["predictions"][0]["reply"] == expected[1]
    # The chat signature with every setting given (REST needs them all), greedy, 5 new tokens.
    # Settings are one value per row, so both formats carry them: a list per input in the
    # columnar format, a value in each instance of the row format.
    settings = dict(
        max_new_tokens=5, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=0, do_sample=False
    )
    settings["no_repeat_ngram_size"] = 0
    columns = {key: [value] for key, value in settings.items()}
    status, chat = http(
        server, "POST", PREDICT, {"signature_name": "chat", "inputs": {"turns": [["Hello"]], **columns}}
    )
    short = Chat(serving_models[0], serving_tokenizer, max_new_tokens=5).reply("Hello")
    assert status == 200 and chat["outputs"]["reply"] == [short]
    instances = [{"turns": ["Hello", ""], **settings}, {"turns": histories[0], **settings, "max_new_tokens": CAP}]
    status, row = http(server, "POST", PREDICT, {"signature_name": "chat", "instances": instances})
    assert status == 200, row
    assert [p["reply"] for p in row["predictions"]] == [short, expected[0]]  # each row its own settings
    status, scalar = http(
        server, "POST", PREDICT, {"signature_name": "chat", "inputs": {"turns": [["Hello"]], **settings}}
    )
    assert status == 400 and "'max_new_tokens' has shape []" in scalar["error"]


def test_generate_over_rest_equals_in_process_generate(server, serving_models):
    rows = [[5, 9, 33, 71, EOS], [42, EOS, 7, 8, 200]]
    settings = dict(max_new_tokens=[6], temperature=[1.0], top_k=[0], top_p=[1.0], repetition_penalty=[1.0], seed=[0])
    settings |= {"do_sample": [False], "no_repeat_ngram_size": [0]}  # [1]: one value for both rows
    body = {"signature_name": "generate", "inputs": {"input_ids": rows, "attention_mask": [[1] * 5] * 2, **settings}}
    status, answer = http(server, "POST", PREDICT, body)
    sequences, lengths = greedy_reference(serving_models[0], rows, 6)
    assert status == 200, answer
    assert answer["outputs"]["sequences"] == sequences.tolist() and answer["outputs"]["lengths"] == lengths.tolist()


def test_status_and_metadata(server):
    status, body = http(server, "GET", f"/v1/models/{MODEL_NAME}")
    assert status == 200
    assert body == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    assert http(server, "GET", f"/v1/models/{MODEL_NAME}/versions/1") == (status, body)
    status, meta = http(server, "GET", f"/v1/models/{MODEL_NAME}/metadata")
    assert status == 200 and meta["model_spec"]["name"] == MODEL_NAME and meta["model_spec"]["version"] == "1"
    signatures = meta["metadata"]["signature_def"]["signature_def"]
    assert list(signatures["serving_default"]["inputs"]) == ["turns"]
    assert signatures["serving_default"]["inputs"]["turns"]["dtype"] == "DT_STRING"
    assert {"chat", "generate", "score"} <= set(signatures)


@pytest.mark.parametrize(
    "method, path, body, code, message",
    [
        ("POST", PREDICT, "{not json", 400, "JSON Parse error"),
        ("POST", PREDICT, {"instances": [["a"]], "inputs": [["a"]]}, 400, "only one of 'inputs' or 'instances'"),
        ("POST", "/v1/models/nope:predict", {"instances": [["a"]]}, 404, "model 'nope' not found"),
        ("POST", f"/v1/models/{MODEL_NAME}/versions/9:predict", {"instances": [["a"]]}, 404, "version 9"),
        ("POST", f"/v1/models/{MODEL_NAME}/labels/canary:predict", {"instances": [["a"]]}, 404, "label 'canary'"),
        ("POST", PREDICT, {"signature_name": "nope", "instances": [["a"]]}, 400, 'signature name: "nope" not found'),
        ("POST", PREDICT, {"instances": [[1]]}, 400, "is not of expected type: DT_STRING"),
        ("POST", PREDICT, {"inputs": {"turns": "Hello"}}, 400, "expects string [batch, turns]"),
        ("POST", PREDICT, {"inputs": {"turns": [["", ""]]}}, 400, "has no turn"),
        ("POST", PREDICT, {"signature_name": "chat", "inputs": {"turns": [["a"]]}}, 400, "Missing named input"),
        ("POST", f"/v1/models/{MODEL_NAME}:classify", {"examples": []}, 501, "classify is not served"),
        ("PUT", PREDICT, {"instances": [["a"]]}, 400, "Malformed request: PUT"),
        ("GET", "/v1/models/nope/metadata", None, 404, "model 'nope' not found"),
        ("GET", f"/v1/models/{MODEL_NAME}/versions/99999999999999999999999", None, 400, "Failed to convert version"),
        ("GET", "/elsewhere", None, 404, "no such path"),
        ("POST", PREDICT, json.dumps({"instances": [["x" * (5 * 1024 * 1024)]]}), 413, "exceeds"),
        ("POST", PREDICT, {"instances": [["Hi"]] * 65}, 400, "has 65 rows; this server takes at most 64"),
    ],
)
def test_bad_requests_get_tf_serving_s_status_and_an_error_body(server, method, path, body, code, message):
    status, answer = http(server, method, path, body)
    assert status == code and set(answer) == {"error"} and message in answer["error"], answer


def test_the_server_stays_up_and_counts_requests_in_its_metrics(server):
    from prometheus_client.parser import text_string_to_metric_families

    http(server, "POST", PREDICT, "{broken")
    status, answer = http(server, "POST", PREDICT, {"instances": [["Still there?"]]})
    assert status == 200 and isinstance(answer["predictions"][0]["reply"], str)
    with urllib.request.urlopen(server.rest_url + "/monitoring/prometheus/metrics", timeout=TIMEOUT) as response:
        page = response.read().decode()
    samples = [s for family in text_string_to_metric_families(page) for s in family.samples]

    def value(name, **labels):
        return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())

    assert value("tfdialogpt_requests_total", entrypoint="rest", signature="serving_default", status="OK") >= 1
    assert value("tfdialogpt_requests_total", entrypoint="rest", status="INVALID_ARGUMENT") >= 1
    assert value("tfdialogpt_requests_total", entrypoint="grpc", api="status", status="OK") >= 1  # the waits
    assert value("tfdialogpt_request_latency_seconds_count", entrypoint="rest", api="predict") >= 2
    assert value("tfdialogpt_batch_rows_count", signature="serving_default") >= 1
    assert value("tfdialogpt_model_version_available", model=MODEL_NAME, version="1") == 1
    assert "nope" not in page, "names the server does not serve get no labels of their own"


def test_a_second_server_on_the_same_rest_port_exits_with_a_message(server, tmp_path):
    import subprocess
    import sys

    with socket.socket() as probe:  # the port is really taken
        assert probe.connect_ex(("127.0.0.1", server.rest_port)) == 0
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tfdialogpt",
            "serve",
            "--model-base-path",
            str(tmp_path / "none"),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--rest-api-port",
            str(server.rest_port),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert str(server.rest_port) in last and "Traceback" not in proc.stderr
    assert http(server, "GET", f"/v1/models/{MODEL_NAME}")[0] == 200
