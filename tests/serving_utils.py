"""Helpers shared by the export and serving tests: a tiny model with decisive logits, a tiny
byte-level tokenizer for it, free ports and a server subprocess with bounded waits."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from conftest import TINY

# Vocabulary = the 256 byte tokens + <|endoftext|>, so a byte-level tokenizer fits the model.
SERVE_CONFIG = TINY.replace(vocab_size=257, bos_token_id=256, eos_token_id=256)
EOS = SERVE_CONFIG.eos_token_id
CAP = 16  # max_new_tokens cap of the test exports
WARMUP_LENGTHS = (16, 32)
MODEL_NAME = "dialogpt"


def serve_limits():
    """The limits an export of a SERVE_CONFIG model with cap CAP has (`signatures.Limits`)."""
    from tfdialogpt.serving import signatures as contract

    return contract.Limits(
        vocab_size=257,
        max_positions=96,
        eos_token_id=EOS,
        pad_token_id=EOS,
        cache_bytes_per_position=512,  # 2 (keys, values) x 2 layers x 32 hidden x 4 bytes
        max_new_tokens_cap=CAP,
    )


def make_model(seed: int, config=SERVE_CONFIG):
    """A tiny DialoGPT with large random weights: logits far apart, so greedy has no near-ties."""
    from tfdialogpt import DialoGPT

    model = DialoGPT(config)
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        if "gamma" in variable.path or variable.path.endswith("scale"):
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        else:
            value = 0.5 * rng.standard_normal(shape)
        variable.assign(value.astype(np.float32))
    return model


def make_tokenizer(directory: Path):
    """A GPT-2-style byte-level BPE with no merges: one id per byte, `<|endoftext|>` = 256."""
    from tfdialogpt import _gpt2_vocab
    from tfdialogpt.tokenizer import Tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    table = _gpt2_vocab.bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    vocab["<|endoftext|>"] = 256
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return Tokenizer.from_pretrained(directory)


def left_pad(rows, width=None):
    width = width or max(len(r) for r in rows)
    ids = np.full((len(rows), width), EOS, np.int32)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = row
        mask[i, width - len(row) :] = 1
    return ids, mask


def bucket_pad(rows, max_new_tokens):
    """Left-padded to the contract's bucket, as the client pads."""
    from tfdialogpt.serving.signatures import padded_length

    return left_pad(rows, padded_length(max(len(r) for r in rows), max_new_tokens, SERVE_CONFIG.max_positions))


def greedy_reference(model, rows, max_new_tokens):
    """In-process `model.generate` (greedy, XLA) for id lists: (sequences, lengths).

    Row by row: rows are independent, and one batch size keeps the tests to one or two
    compiled buckets.
    """
    sequences, lengths = [], []
    for row in rows:
        out = model.generate(np.array([row], np.int32), max_new_tokens=max_new_tokens)
        sequences.append(np.asarray(out.sequences)[0])
        lengths.append(int(np.asarray(out.lengths)[0]))
    return np.stack(sequences), np.array(lengths, np.int32)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`python -m tfdialogpt.serving.server` on free loopback ports (gRPC, REST), logging to a file."""

    def __init__(self, base_path: Path, log_path: Path, *extra: str):
        self.port, self.rest_port = free_port(), free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.rest_url = f"http://127.0.0.1:{self.rest_port}"
        self.log_path = log_path
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tfdialogpt.serving.server",
                "--model-base-path",
                str(base_path),
                "--model-name",
                MODEL_NAME,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--rest-api-port",
                str(self.rest_port),
                "--poll-interval",
                "0.2",
                *extra,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for_version(self, version: int, timeout: float = 120.0) -> None:
        """Bounded wait until `version` is AVAILABLE (raises with the server log otherwise)."""
        from tfdialogpt.serving.client import Client, ServingError

        deadline = time.monotonic() + timeout
        with Client(self.target, MODEL_NAME, timeout=5) as client:
            while time.monotonic() < deadline:
                assert self.process.poll() is None, f"server exited:\n{self.log()}"
                try:
                    if client.status().get(version, ("",))[0] == "AVAILABLE":
                        return
                except ServingError:
                    pass
                time.sleep(0.2)
        raise AssertionError(f"version {version} not available after {timeout} s:\n{self.log()}")

    def terminate(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
        return self.process.returncode
