"""The embedded default model (`tfdialogpt/assets/default/`, built by
`scripts/build_default_model.py`): small, loads offline, greets back, HF-compatible."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from tfdialogpt.config import DEFAULT_MODEL_DIR

GREETINGS = ("hi", "hello", "greetings", "hey", "good morning", "how are you")


@pytest.fixture(scope="module")
def default_model():
    from tfdialogpt import DialoGPT
    from tfdialogpt.tokenizer import Tokenizer

    return DialoGPT.from_pretrained("default"), Tokenizer.from_pretrained(DEFAULT_MODEL_DIR)


def test_files_and_size_budget():
    """The model and its reverse (MMI) model, each a complete HF-layout directory, together
    within the 20 MiB package budget."""
    for directory in (DEFAULT_MODEL_DIR, DEFAULT_MODEL_DIR / "reverse"):
        for name in ("config.json", "tf_model.h5", "vocab.json", "merges.txt", "build_report.json"):
            assert (directory / name).is_file(), directory / name
    total = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.rglob("*") if p.is_file())
    assert total <= 20 * 1024 * 1024, total


def test_loads_without_network(monkeypatch):
    from tfdialogpt import DialoGPT

    def no_network(*args, **kwargs):
        raise OSError("network access during an offline load")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = DialoGPT.from_pretrained("default")
    assert model.config.vocab_size == json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())["vocab_size"]


def test_hello_gets_a_greeting(default_model):
    from tfdialogpt.training.evaluation import generate_replies

    model, tokenizer = default_model
    hello, hi, how = generate_replies(model, tokenizer, [["Hello"], ["Hi"], ["How are you?"]], max_new_tokens=16)
    assert any(word in hello.lower() for word in GREETINGS), hello
    assert any(word in hi.lower() for word in GREETINGS), hi
    assert how  # a non-empty answer
    report = json.loads((DEFAULT_MODEL_DIR / "build_report.json").read_text())
    assert report["greedy_replies"]["Hello"] == hello  # the build's own record agrees


def test_transformers_loads_it_with_the_same_tokens_and_logits(default_model):
    from transformers import GPT2TokenizerFast, TFGPT2LMHeadModel

    model, tokenizer = default_model
    text = "Hello, how are you doing today?"
    assert GPT2TokenizerFast.from_pretrained(DEFAULT_MODEL_DIR).encode(text) == tokenizer.encode(text)
    ids = np.array([tokenizer.encode_dialogue(["Hello", "Hi"])], np.int32)
    hf = TFGPT2LMHeadModel.from_pretrained(DEFAULT_MODEL_DIR)
    np.testing.assert_allclose(hf(ids).logits.numpy(), model(ids).numpy(), atol=1e-4)


def test_reported_validation_perplexity_is_reproduced(default_model):
    """The build's held-out split, made again from the corpus, and the stored weights give the
    perplexities the reports hold for the first held-out windows (`check`: the whole held-out
    set takes a minute per model here; the build scores that with the same `evaluate`)."""
    report = json.loads((DEFAULT_MODEL_DIR / "build_report.json").read_text())
    arguments = report["arguments"]
    corpus = arguments.get("corpus", "chatterbot")  # builds before --corpus were chatterbot's
    for package in {"chatterbot": ["chatterbot_corpus"], "ccc": ["chitchat_dataset"]}.get(
        corpus, ["chatterbot_corpus", "chitchat_dataset"]
    ):
        pytest.importorskip(package, reason=f"the build's validation split comes from {package}")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import build_default_model as build

    from tfdialogpt.training import evaluate

    dialogues, _ = build.load_corpus(corpus)
    split = arguments["valid_share"], arguments["window"], arguments["seed"]
    _, valid = build.split_corpus(dialogues, *split)
    valid = build.held_out_ccc(corpus, valid, *split)
    assert len(valid) == report["data"]["scored_ccc_valid_windows"]
    check = valid[: build.CHECK_WINDOWS]
    model, tokenizer = default_model
    scores = evaluate(model, check, tokenizer=tokenizer, max_seq_len=arguments["max_seq_len"], generate=False)
    assert scores["perplexity"] == pytest.approx(report["check"]["perplexity"], rel=1e-4)
    assert scores["perplexity"] < 1000
    # The reverse model, on the same conversations with their turns reversed.
    from tfdialogpt import DialoGPT

    reverse = DialoGPT.from_pretrained(DEFAULT_MODEL_DIR / "reverse")
    reverse_report = json.loads((DEFAULT_MODEL_DIR / "reverse" / "build_report.json").read_text())
    backwards = evaluate(
        reverse,
        build.reversed_windows(check),
        tokenizer=tokenizer,
        max_seq_len=arguments["max_seq_len"],
        generate=False,
    )
    assert backwards["perplexity"] == pytest.approx(reverse_report["check"]["perplexity"], rel=1e-4)
    assert backwards["perplexity"] < 1000  # trained: a random model scores about its vocabulary size


@pytest.mark.parametrize("flag,value", [("--epochs", "0"), ("--reverse-epochs", "-1"), ("--reverse-epochs", "nan")])
def test_build_script_refuses_training_lengths_that_are_not_positive(flag, value, capsys, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import build_default_model as build

    with pytest.raises(SystemExit) as exited:
        build.main(["--output", str(tmp_path / "out"), flag, value])
    assert exited.value.code == 2
    assert f"{flag}: '{value}' must be a finite number above 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
