"""The command line, run as users run it: subprocesses, a real pseudo-terminal for chat."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pexpect
import pytest

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
COMMANDS = [
    "info",
    "init",
    "convert",
    "tokenize",
    "generate",
    "chat",
    "prepare",
    "finetune",
    "evaluate",
    "export",
    "serve",
    "demo",
]


def run(*args, input=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "tfdialogpt", *args],
        input=input,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def default_greedy():
    """In-process greedy replies of the default model, to compare the CLI's with."""
    from tfdialogpt import DialoGPT, Tokenizer
    from tfdialogpt.chat import Chat

    chat = Chat(DialoGPT.from_pretrained("default"), Tokenizer.from_pretrained("default"))
    replies = {}
    for text in ("Hello", "How are you?"):  # each as the first turn of a conversation
        chat.reset()
        replies[text] = chat.reply(text)
    return replies, chat


def test_every_command_has_help_with_examples():
    import argparse

    from tfdialogpt.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert sorted(subparsers) == sorted(COMMANDS)
    for command in COMMANDS:
        text = subparsers[command].format_help()
        assert "examples:" in text and f"tfdialogpt {command}" in text, command


def test_help_runs_without_loading_tensorflow():
    code = (
        "import sys\nfrom tfdialogpt.cli import main\ntry:\n    main(['serve', '--help'])\n"
        "except SystemExit as e:\n    assert e.code == 0\nsys.exit(3 if 'tensorflow' in sys.modules else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert out.returncode == 0, out.stderr or "--help loaded TensorFlow"
    assert "tfdialogpt serve" in out.stdout


def test_no_tensorflow_start_up_lines_on_the_terminal():
    """TF's absl lines (oneDNN, cudart) come before TF_CPP_MIN_LOG_LEVEL applies; none show."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run(
        [sys.executable, "-m", "tfdialogpt", "generate", "--max-new-tokens", "2", "Hello"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert out.stdout.strip()


def test_errors_are_one_clear_line(tmp_path):
    out = run("generate", "--model", str(tmp_path / "missing"), "Hello")
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.startswith("tfdialogpt")]
    assert len(lines) == 1 and lines[0].startswith("tfdialogpt generate: error: ")
    assert str(tmp_path / "missing") in lines[0]
    assert "Traceback" not in out.stderr
    out = run("generate", "--top-p", "1.5", "Hello")
    assert out.returncode == 2 and "top_p" in out.stderr and "Traceback" not in out.stderr
    out = run("generate", "--json", "{bad", timeout=60)
    assert out.returncode == 2 and "--json is not valid JSON" in out.stderr
    out = run("chat", "--server", "localhost:1", "--quantize", "int8", input="Hello\n", timeout=60)
    assert out.returncode == 2 and "--quantize applies to a local model" in out.stderr
    assert "Traceback" not in out.stderr


def test_generate_from_arguments_and_json(default_greedy):
    replies, _ = default_greedy
    out = run("generate", "Hello")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == replies["Hello"]
    out = run("generate", "--json", "-", input=json.dumps({"turns": ["Hello"]}))
    assert out.stdout.strip() == replies["Hello"]


def test_generate_with_int8_weights():
    from tfdialogpt import DialoGPT, Tokenizer
    from tfdialogpt.chat import Chat

    expected = Chat(DialoGPT.from_pretrained("default", quantize="int8"), Tokenizer.from_pretrained("default"))
    out = run("generate", "--quantize", "int8", "How are you?")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected.reply("How are you?")


def test_chat_with_a_server_sends_text_or_budgets_ids_by_the_model_config(monkeypatch, tmp_path):
    """`chat --server` talks text to the export's chat signature (no tokenizer, no config
    here, only the settings given on the command line). With MMI it tokenizes here and sizes
    histories by the served model's config (--model, here the default one), not by GPT-2's
    1024 positions, and refuses a config the tokenizer does not fit."""
    from tfdialogpt import cli, commands
    from tfdialogpt.chat import ServedChat
    from tfdialogpt.checkpoint import load_config
    from tfdialogpt.config import DialoGPTConfig
    from tfdialogpt.serving.client import Client

    monkeypatch.setattr(Client, "wait_until_available", lambda self, timeout=60.0, poll=0.2: 1)
    parse = cli.build_parser().parse_args
    chat = commands._make_chat(parse(["chat", "--server", "localhost:1", "--max-new-tokens", "20"]))
    try:
        assert isinstance(chat, ServedChat) and chat.settings == {"max_new_tokens": 20}
        assert chat.client._tokenizer is None and chat.client.chat_signature == "chat"
    finally:
        chat.client.close()
    chat = commands._make_chat(parse(["chat", "--server", "localhost:1", "--mmi-model", "default"]))
    try:
        config = load_config("default")
        assert config.max_positions < 1024
        assert (chat.backend.max_positions, chat.backend.eos_token_id) == (config.max_positions, config.eos_token_id)
        assert isinstance(chat.backend, Client)
    finally:
        chat.backend.close()
    small = tmp_path / "small-vocab"
    DialoGPTConfig(vocab_size=100, max_positions=64, hidden_size=8, num_layers=1, num_heads=2).save(small)
    args = ["chat", "--server", "localhost:1", "--model", str(small), "--tokenizer", "default"]
    args += ["--mmi-model", "default"]
    with pytest.raises(ValueError, match="--model names the served model"):
        commands._make_chat(parse(args))


def test_mmi_flag_finds_the_reverse_model_beside_the_model_or_says_there_is_none(tmp_path):
    """`--mmi` takes the model's own reverse model (`reverse/` in its directory; the embedded
    default has one); a model without one is one line and exit 2, not a traceback."""
    from tfdialogpt import cli, commands
    from tfdialogpt.checkpoint_files import reverse_model_dir
    from tfdialogpt.config import DEFAULT_MODEL_DIR, DialoGPTConfig

    parse = cli.build_parser().parse_args
    assert reverse_model_dir("default") == DEFAULT_MODEL_DIR / "reverse"
    assert commands._mmi_model(parse(["chat", "--mmi"])) == DEFAULT_MODEL_DIR / "reverse"
    assert commands._mmi_model(parse(["evaluate", "--data", "x.tsv", "--mmi"])) == DEFAULT_MODEL_DIR / "reverse"
    assert commands._mmi_model(parse(["chat", "--mmi-model", "some/dir"])) == "some/dir"
    alone = tmp_path / "alone"
    DialoGPTConfig(vocab_size=100, max_positions=64, hidden_size=8, num_layers=1, num_heads=2).save(alone)
    out = run("generate", "--model", str(alone), "--mmi", "Hello")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"tfdialogpt generate: error: no reverse model beside model '{alone}' (looked for reverse/config.json "
        "in its directory): name the reverse model itself (--mmi-model)"
    ]
    out = run("chat", "--mmi", "--mmi-model", "default")
    assert out.returncode == 2 and "not allowed with argument" in out.stderr


def test_chat_from_a_pipe(default_greedy):
    replies, _ = default_greedy
    out = run("chat", input="Hello\n/reset\nHow are you?\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"bot> {replies['Hello']}",
        "(history cleared)",
        f"bot> {replies['How are you?']}",
    ]


def test_chat_in_a_pseudo_terminal(default_greedy):
    """Prompt, replies, /reset, /quit through a real pty, as a person types."""
    replies, chat = default_greedy
    chat.reset()
    chat.reply("Hello")
    second = chat.reply("How are you?")  # the reply with the first exchange as history
    child = pexpect.spawn(sys.executable, ["-m", "tfdialogpt", "chat"], env=ENV, encoding="utf-8", timeout=120)
    try:
        child.expect("/reset starts over")
        child.expect_exact("you> ")
        child.sendline("Hello")
        child.expect_exact(f"bot> {replies['Hello']}")
        child.expect_exact("you> ")
        child.sendline("How are you?")
        child.expect_exact(f"bot> {second}")
        child.expect_exact("you> ")
        child.sendline("/reset")
        child.expect_exact("(history cleared)")
        child.expect_exact("you> ")
        child.sendline("How are you?")
        child.expect_exact(f"bot> {replies['How are you?']}")  # no history after /reset
        child.expect_exact("you> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_chat_ctrl_d_leaves():
    child = pexpect.spawn(sys.executable, ["-m", "tfdialogpt", "chat"], env=ENV, encoding="utf-8", timeout=120)
    try:
        child.expect_exact("you> ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_init_convert_info_tokenize(tmp_path, tiny_reference):
    out = run(
        "convert",
        "--model",
        str(tiny_reference.path("pt_sharded")),
        "--output",
        str(tmp_path / "c"),
        "--no-tokenizer",
        "--safetensors",
    )
    assert out.returncode == 0, out.stderr
    assert sorted(os.listdir(tmp_path / "c")) == ["config.json", "model.safetensors", "tf_model.h5"]
    out = run("info", "--model", str(tmp_path / "c"), "--check")
    info = json.loads(out.stdout)
    assert info["layers"] == 2 and info["loaded"].startswith("every tensor")
    out = run("tokenize", "--dialogue", "Hello", "Hi")
    from tfdialogpt import Tokenizer

    assert json.loads(out.stdout) == Tokenizer.from_pretrained("default").encode_dialogue(["Hello", "Hi"])


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    """`make demo`'s job: export, serve, a scripted conversation over gRPC, one REST call, clean stop."""
    out = run("demo", "--workdir", str(tmp_path), "--turn", "Hello", "--turn", "How are you?")
    assert out.returncode == 0, out.stderr[-3000:]
    bot_lines = [line for line in out.stdout.splitlines() if line.startswith("bot> ")]
    assert len(bot_lines) == 2 and all(line.rstrip().endswith(" ms]") for line in bot_lines)
    assert "server stopped (exit status 0)" in out.stdout
    assert (tmp_path / "dialogpt" / "1" / "saved_model.pb").is_file()
    rest = [line for line in out.stdout.splitlines() if line.startswith("REST: POST http://127.0.0.1:")]
    assert len(rest) == 1 and '{"inputs": {"turns": [["Hello"]]}}' in rest[0], out.stdout


def test_undecodable_input_is_a_clear_message():
    """Bytes that are not UTF-8: chat says so and goes on; generate exits 2 with one line."""
    out = subprocess.run(
        [sys.executable, "-m", "tfdialogpt", "chat", "--max-new-tokens", "4"],
        input=b"Hello\n\xff\xfe\nHello\n",
        capture_output=True,
        env=ENV,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    lines = out.stdout.decode().splitlines()
    assert len(lines) == 3 and lines[0].startswith("bot> ") and lines[2].startswith("bot> ")
    assert lines[1].startswith("error: that line is not valid UTF-8 (byte 0xff at position 0)")
    out = subprocess.run(
        [sys.executable, "-m", "tfdialogpt", "generate", "--json", "-"],
        input=b'["Hi \xff"]',
        capture_output=True,
        env=ENV,
        timeout=300,
    )
    assert out.returncode == 2
    assert out.stderr.decode().strip() == (
        "tfdialogpt generate: error: the --json input is not valid UTF-8 (byte 0xff at position 5)"
    )


LATIN1_TSV = b"Hello\tHi there !\n\xe9t\xe9\tsummer\nHow are you ?\tFine , thanks .\n"  # line 2: Latin-1


def _finetune(*args):
    return run("finetune", "--epochs", "1", "--batch-size", "2", "--quiet", "--no-jit", *args)


def test_finetune_reports_a_line_that_is_not_utf8_and_goes_on_or_fails_with_strict(tmp_path):
    train = tmp_path / "train.tsv"
    train.write_bytes(LATIN1_TSV)
    issue = f"{train}:2: invalid UTF-8 at byte 1 of the line (0xe9)"
    out = _finetune("--train", str(train), "--output", str(tmp_path / "strict"), "--strict")
    assert out.returncode == 2
    assert out.stderr.splitlines() == [f"tfdialogpt finetune: error: {train}: 1 malformed line: {issue}"]
    assert not (tmp_path / "strict").exists()

    # into a directory with other files: --overwrite lets it write there
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    out = _finetune("--train", str(train), "--output", str(output), "--overwrite")
    assert out.returncode == 0, out.stderr
    assert issue in out.stderr
    assert json.loads(out.stdout)["malformed_lines"] == 1
    report = json.loads((output / "training_report.json").read_text())
    assert report["malformed_lines"]["train"] == [issue] and report["train_examples"] == 2
    assert (output / "notes.txt").read_text() == "mine"


def test_finetune_refuses_its_model_directory_a_foreign_one_or_a_file_in_one_line(tmp_path):
    import shutil

    from tfdialogpt.config import DEFAULT_MODEL_DIR

    train = tmp_path / "train.tsv"
    train.write_text("Hello\tHi there !\n")
    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    before = {p.relative_to(model): (p.read_bytes(), p.stat().st_mtime_ns) for p in model.rglob("*") if p.is_file()}
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for output, message in (
        (model, "is the directory of the model being fine-tuned"),
        (foreign, "is not empty and holds no unfinished run of finetune to resume"),
        (foreign / "notes.txt", "is a file"),
    ):
        out = _finetune("--model", str(model), "--train", str(train), "--output", str(output))
        assert out.returncode == 2, out.stderr
        lines = out.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"tfdialogpt finetune: error: output directory {output} ")
        assert message in lines[0]
    after = {p.relative_to(model): (p.read_bytes(), p.stat().st_mtime_ns) for p in model.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"] and (foreign / "notes.txt").read_text() == "mine"
