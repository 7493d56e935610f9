"""The exported `chat` signature (text in, text out) against in-process `Chat.reply` (greedy), on
the embedded default model and on a tiny model with GPT-2's tokenizer and DialoGPT's 1,024
positions (the text graph and the history's truncation are what is under test here; the model's
size is not: DialoGPT-small's parity is `test_generation.py`'s), through every route a user has:
a process importing only tensorflow and tensorflow_text, the official
`PredictionServiceStub` with string tensors against `tfdialogpt serve`, and its REST API.

Expected replies come from `Chat` (the tokenizer in Python, `model.generate`), never from the
export under test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import TINY
from serving_utils import MODEL_NAME, ServerProcess, make_model
from test_tokenizer import gpt2_dir  # noqa: F401 (fixture)

from tfdialogpt import DialoGPT, Tokenizer
from tfdialogpt.chat import Chat
from tfdialogpt.serving.export import export

pytestmark = pytest.mark.slow

NEW = 12  # new tokens per reply: enough to see real text, quick to decode
HISTORIES = [
    ["Hello"],
    ["Hi there!", "Hello, how are you?", "I'm fine. What do you do for fun?"],
    ["Do you like music?"],
    ["  Ünïcödé\u3000spaces\tand émoji 🎉 ", "ok", "你好，朋友"],
    ["a<|endoftext|>b", "What's 2+2? It's 4, isn't it?"],
]


def long_history(tokenizer, positions: int) -> list[str]:
    """More history than fits: the graph must drop the oldest whole turns, as `Chat` does."""
    turn = " ".join(["words and more words"] * 12)
    per_turn = len(tokenizer.encode(turn)) + 1
    return [f"{i}: {turn}" for i in range(positions // per_turn + 3)] + ["And now?"]


def expected_replies(model, tokenizer, histories, new=NEW, jit_compile=True) -> list[str]:
    from tfdialogpt.chat import LocalBackend

    replies = []
    for history in histories:
        backend = LocalBackend(model, jit_compile=jit_compile)
        chat = Chat(backend, tokenizer, history=history[:-1], max_new_tokens=new)
        replies.append(chat.reply(history[-1]))
    return replies


def as_turns(histories) -> list[list[str]]:
    width = max(len(h) for h in histories)
    return [list(h) + [""] * (width - len(h)) for h in histories]


class Case:
    def __init__(self, name, model, tokenizer, path, histories):
        self.name, self.model, self.tokenizer, self.path, self.histories = name, model, tokenizer, path, histories
        self.expected = expected_replies(model, tokenizer, histories)


# GPT-2's vocabulary and DialoGPT's positions on a tiny body, with decisive logits.
GPT2_TINY = TINY.replace(vocab_size=50257, max_positions=1024, bos_token_id=50256, eos_token_id=50256)


@pytest.fixture(scope="module", params=["default", "gpt2"])
def case(request, tmp_path_factory, gpt2_dir):  # noqa: F811
    base = tmp_path_factory.mktemp(f"chat_{request.param}") / MODEL_NAME
    if request.param == "default":
        model, tokenizer = DialoGPT.from_pretrained("default"), Tokenizer.from_pretrained("default")
        result = export(model, base, max_new_tokens_cap=NEW, warmup_prompt_lengths=(16,))
    else:
        model = make_model(0, GPT2_TINY)
        tokenizer = Tokenizer.from_pretrained(gpt2_dir)
        result = export(
            model, base, max_new_tokens_cap=NEW, warmup_prompt_lengths=(16,), include_xla=False, tokenizer=tokenizer
        )
    histories = HISTORIES + [long_history(tokenizer, model.config.max_positions)]
    return Case(request.param, model, tokenizer, result.path, histories)


FRESH = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    from tensorflow.python.framework import op_def_registry
    from tensorflow.core.protobuf import saved_model_pb2

    path, turns, new = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    penalty, ngram = float(sys.argv[4]), int(sys.argv[5])
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString(open(path + "/saved_model.pb", "rb").read())
    graph = saved.meta_graphs[0].graph_def
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    ops -= {f.signature.name for f in graph.library.function}
    core = sorted(op for op in ops if op_def_registry.get(op) is not None)
    import tensorflow_text  # noqa: F401  (registers TF Text's ops, as TF Serving links them)
    text = sorted(op for op in set(ops) - set(core) if op_def_registry.get(op) is not None)
    loaded = tf.saved_model.load(path)
    settings = dict(max_new_tokens=tf.constant([new]), temperature=tf.constant([1.0]), top_k=tf.constant([0]),
                    top_p=tf.constant([1.0]), repetition_penalty=tf.constant([penalty]), seed=tf.constant([0]),
                    do_sample=tf.constant([False]), no_repeat_ngram_size=tf.constant([ngram]))  # [1]: for every row
    result = {"core": core, "text": text, "unknown": sorted(ops - set(core) - set(text))}
    for name in [n for n in ("chat", "chat_xla", "serving_default") if n in loaded.signatures]:
        given = settings if name != "serving_default" else {}  # turns only: the export's defaults
        out = loaded.signatures[name](turns=tf.constant(turns), **given)
        result[name] = [r.decode("utf-8") for r in out["reply"].numpy().tolist()]
    result["foreign"] = [m for m in ("tfdialogpt", "tokenizers", "sentencepiece") if m in sys.modules]
    print("RESULT " + json.dumps(result))
""")


def test_fresh_tensorflow_process_replies_as_chat(case, tmp_path):
    # The model's own repetition penalty and n-gram ban (the default's generation_config: 1.3 and 3), as
    # `Chat` uses them.
    penalty = case.model.generation_config.repetition_penalty
    ngram = case.model.generation_config.no_repeat_ngram_size
    histories = json.dumps(as_turns(case.histories))
    proc = subprocess.run(
        [sys.executable, "-c", FRESH, case.path, histories, str(NEW), str(penalty), str(ngram)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["foreign"] == []
    # Every op is TF core or TF Text (TF Serving links both); the TF Text ones are SentencePiece's.
    assert result["unknown"] == []
    assert set(result["text"]) <= {"SentencepieceOp", "SentencepieceTokenizeOp"} and result["text"]
    assert not {"PyFunc", "PyFuncStateless", "EagerPyFunc"} & set(result["core"])
    assert any(reply for reply in case.expected), "the expected replies must not all be empty"
    for name in ("chat", "serving_default") + (("chat_xla",) if "chat_xla" in result else ()):
        assert result[name] == case.expected, name


def test_official_stub_and_rest_api_reply_as_chat(case, tmp_path):
    """One `tfdialogpt serve`: the official gRPC stub with string tensors (the chat signature
    with a setting given; serving_default with the turns alone), and the REST API called with
    urllib as curl would (no signature: serving_default; both JSON formats)."""
    import urllib.request

    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    base = tmp_path / MODEL_NAME
    shutil.copytree(case.path, base / "1")
    server = ServerProcess(base, tmp_path / "server.log")
    turns = as_turns(case.histories)
    try:
        server.wait_for_version(1, timeout=300)
        with grpc.insecure_channel(server.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            # A setting is one value per row, or [1] for every row.
            for signature, settings in (("chat", {"max_new_tokens": [NEW]}), ("", {})):
                request = predict_pb2.PredictRequest()
                request.model_spec.name = MODEL_NAME
                request.model_spec.signature_name = signature  # "": serving_default, the chat, turns only
                request.inputs["turns"].CopyFrom(tf.make_tensor_proto(turns))
                for key, value in settings.items():
                    request.inputs[key].CopyFrom(tf.make_tensor_proto(value, tf.int32))
                response = stub.Predict(request, timeout=300)
                assert response.model_spec.signature_name == (signature or "serving_default")
                replies = [r.decode("utf-8") for r in tf.make_ndarray(response.outputs["reply"]).tolist()]
                assert replies == case.expected, signature
                lengths = tf.make_ndarray(response.outputs["lengths"])
                assert lengths.shape == (len(case.histories),) and np.all(lengths >= 1)
        url = f"{server.rest_url}/v1/models/{MODEL_NAME}:predict"
        for body, pick in (
            ({"inputs": {"turns": turns}}, lambda answer: answer["outputs"]["reply"]),
            ({"instances": turns}, lambda answer: [row["reply"] for row in answer["predictions"]]),
        ):
            request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=300) as response:
                assert response.status == 200
                assert pick(json.loads(response.read())) == case.expected, list(body)
    finally:
        assert server.terminate() == 0, server.log()


SAVED_MODEL_CLI = textwrap.dedent("""
    import sys
    import tensorflow_text  # noqa: F401  (TF Text's ops, which TF Serving's stock build links)
    from tensorflow.python.tools import saved_model_cli
    sys.argv[0] = "saved_model_cli"
    saved_model_cli.main()
""")


def test_saved_model_cli_run_replies_as_chat(case, tmp_path):
    """`saved_model_cli run`: TF's own tool, on the TF1 session path TF Serving's C++ loader
    takes (restore op, main op, the SignatureDef's tensor names). The stock binary does not
    register TF Text's ops, so it runs with them imported first, as TF Serving links them."""
    outdir = tmp_path / "out"
    command = [sys.executable, "-c", SAVED_MODEL_CLI, "run", "--dir", case.path, "--tag_set", "serve"]
    command += [
        "--signature_def",
        "serving_default",
        "--input_exprs",
        f"turns={json.dumps(as_turns(case.histories), ensure_ascii=False)}",
    ]
    command += ["--outdir", str(outdir)]
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    replies = np.load(outdir / "reply.npy", allow_pickle=True)
    assert [r.decode("utf-8") for r in replies.tolist()] == case.expected
