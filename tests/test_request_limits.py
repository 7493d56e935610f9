"""A request may not ask for more KV cache than `--max-cache-mb-per-request` (rows x (padded
prompt + max_new_tokens) x the model's bytes a position): a 64-row request of long histories
is a few hundred KB on the wire and, on DialoGPT-small, 4.8 GB of cache. Expected positions are worked out by hand
from the prompt buckets (16, 32, 64, ...)."""

from __future__ import annotations

import dataclasses
import shutil

import grpc
import numpy as np
import pytest
from serving_utils import EOS, MODEL_NAME, ServerProcess, left_pad, serve_limits

from tfdialogpt.serving import signatures as contract
from tfdialogpt.serving.errors import InvalidRequestError
from tfdialogpt.serving.limits import RequestLimits
from tfdialogpt.serving.request_checks import positions_per_row

LIMITS = serve_limits()


def _generate(rows, new):
    ids, mask = left_pad(rows)
    return {"input_ids": ids, "attention_mask": mask, **contract.setting_inputs({"max_new_tokens": new}, len(rows))}


def test_positions_per_row_follow_the_buckets():
    # The longest real prompt (5 tokens, whatever the padding sent) goes to bucket 16, + 8 new.
    inputs = _generate([[1, 2, 3, 4, 5], [6, 7]], 8)
    inputs["input_ids"] = np.pad(inputs["input_ids"], [[0, 0], [30, 0]])
    inputs["attention_mask"] = np.pad(inputs["attention_mask"], [[0, 0], [30, 0]])
    assert positions_per_row(contract.GENERATE, inputs, LIMITS) == 24
    assert positions_per_row(contract.GENERATE, _generate([[1] * 20], 16), LIMITS) == 48  # bucket 32 + 16
    assert positions_per_row(contract.GENERATE, _generate([[1] * 90], 6), LIMITS) == 96  # the model's positions
    # Chat: bytes plus one end-of-turn a turn bound the tokens: "Hello" + "yo" = 7 + 2 -> 16 + 8.
    chat = {"turns": np.array([[b"Hello", b"yo", b""]], object), **contract.setting_inputs({"max_new_tokens": 8})}
    assert positions_per_row(contract.CHAT, chat, LIMITS) == 24
    # serving_default has no max_new_tokens input: the export's cap (16) bounds it.
    assert positions_per_row(contract.CHAT_DEFAULT, {"turns": np.array([[b"Hi"]], object)}, LIMITS) == 32
    score = {"input_ids": np.ones((3, 40), np.int32)}
    score["attention_mask"] = score["target_mask"] = score["input_ids"]
    assert positions_per_row(contract.SCORE, score, LIMITS) == 40


def test_check_cache_refuses_more_than_the_limit():
    limits = RequestLimits(max_cache_mb=0.1)  # 104,857 bytes / 512 a position: 204 tokens
    assert limits.max_tokens(LIMITS) == 204
    limits.check_cache(8, 25, LIMITS)
    with pytest.raises(
        InvalidRequestError, match=r"9 rows x 24 positions = 216 tokens .* at most 0.1 MiB .*204 tokens"
    ):
        limits.check_cache(9, 24, LIMITS)
    # One full-length row is always allowed, however small the budget.
    RequestLimits(max_cache_mb=0.001).check_cache(1, 96, LIMITS)
    with pytest.raises(InvalidRequestError, match="98 tokens"):
        RequestLimits(max_cache_mb=0.001).check_cache(2, 49, LIMITS)
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive and finite"):
            RequestLimits(max_cache_mb=bad)


@pytest.mark.parametrize(
    "layers, hidden, positions",  # the default 128 MiB on DialoGPT's shapes, float32: worked by hand
    [(12, 768, 1820), (24, 1024, 1024), (36, 1280, 1024)],  # small; medium, large: one full row
)
def test_the_default_budget_on_dialogpt_shapes(layers, hidden, positions):
    model = dataclasses.replace(LIMITS, max_positions=1024, cache_bytes_per_position=2 * layers * hidden * 4)
    assert RequestLimits().max_tokens(model) == positions


def test_the_server_refuses_a_request_over_its_token_limit(shared_export, tmp_path):
    from tfdialogpt.serving.client import Client

    base = tmp_path / MODEL_NAME
    shutil.copytree(shared_export.path, base / "1")
    server = ServerProcess(base, tmp_path / "server.log", "--max-cache-mb-per-request", "0.1", "--no-warmup")
    try:
        server.wait_for_version(1)
        with Client(server.target, MODEL_NAME, timeout=60, max_positions=96, eos_token_id=EOS) as client:
            prompt = [5, 9, 33, EOS]
            with pytest.raises(InvalidRequestError, match="216 tokens") as err:
                client.generate([prompt] * 9, max_new_tokens=8)  # 9 x (16 + 8) x 512 bytes > 0.1 MiB
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
            out = client.generate([prompt] * 8, max_new_tokens=8)  # 8 x 24 = 192: answered
            assert out.sequences.shape == (8, 8)
    finally:
        server.terminate()
