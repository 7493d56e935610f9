"""The `tfdialogpt` command line: argument parsing only; the work happens in library calls."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

from tfdialogpt import commands
from tfdialogpt.training.settings import TrainingSettings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # keep TF's C++ start-up chatter off the terminal


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _add_command(subparsers, name, help_text, examples, func):
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog="examples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  "),
        formatter_class=_formatter,
    )
    parser.set_defaults(func=func)
    return parser


def _add_sampling_arguments(p) -> None:
    """One flag per `GenerationConfig` setting: its name, type, range and default from there."""
    from tfdialogpt.generation_config import SETTINGS

    g = p.add_argument_group("decoding (GenerationConfig; the model's generation_config.json, else its defaults)")
    for name, setting in SETTINGS.items():
        if name in commands.NO_FLAG:
            continue
        flag = "--" + name.replace("_", "-")
        if setting.kind is bool:
            g.add_argument(flag, action="store_true", default=None, help=setting.doc)
            continue
        default = "none" if setting.default is None else setting.default
        g.add_argument(
            flag,
            type=_setting_type(setting),
            default=None,
            metavar=name.split("_")[-1].upper(),
            help=f"{setting.doc}; in {setting.range_text()} (default {default})",
        )
    g.add_argument("--no-xla", action="store_true", help="decode without XLA (jit_compile=False)")


def _setting_type(setting):
    def parse(text: str):
        try:
            value = setting.kind(text) if setting.kind is float else int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if setting.kind is int else 'a number'}, got {text!r}"
            ) from None
        try:
            return setting.check(value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def _add_mmi_arguments(p) -> None:
    mmi = p.add_mutually_exclusive_group()
    mmi.add_argument("--mmi-model", default=None, help="reverse model for MMI reranking (directory or hub id)")
    mmi.add_argument(
        "--mmi",
        action="store_true",
        help="MMI reranking with the model's own reverse model (the default model embeds one; a local "
        "model's is its reverse/ subdirectory)",
    )


def _add_model_arguments(p, server: bool) -> None:
    from tfdialogpt.quantization import MODES

    p.add_argument("--model", default="default", help="directory, hub id, or 'default' (embedded model)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory or hub id (default: --model)")
    _add_mmi_arguments(p)
    p.add_argument("--mmi-candidates", type=int, default=8, help="candidates sampled for MMI")
    p.add_argument("--mmi-temperature", type=float, default=None, help="sample by softmax(score/T) instead of argmax")
    p.add_argument(
        "--quantize",
        choices=MODES,
        default=None,
        help="int8 weights: faster generation on CPU at a small accuracy cost",
    )
    if server:
        p.add_argument(
            "--server",
            metavar="HOST:PORT",
            default=None,
            help="chat through a served export's chat signature instead (text over gRPC; no model or "
            "tokenizer here; with --mmi or --mmi-model, --model names the served model's config and tokenizer)",
        )
        p.add_argument("--model-name", default="dialogpt", help="the served model's name")
        p.add_argument("--timeout", type=float, default=60.0, help="seconds allowed to each request")


# ---- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfdialogpt",
        description="DialoGPT in TensorFlow/Keras: load, convert, generate, fine-tune and serve.",
        formatter_class=_formatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _add_command(
        subparsers,
        "info",
        "Show a checkpoint's architecture and files.",
        """
        tfdialogpt info --model microsoft/DialoGPT-medium
        tfdialogpt info --model ./my-checkpoint --check
    """,
        commands.cmd_info,
    )
    p.add_argument("--model", default="default", help="directory, hub id, or 'default' (embedded model)")
    p.add_argument("--check", action="store_true", help="also load every tensor strictly (names, shapes, no NaN/Inf)")

    p = _add_command(
        subparsers,
        "init",
        "Write a randomly initialised model of a DialoGPT shape.",
        """
        tfdialogpt init --preset small --output ./dialogpt-small-random
    """,
        commands.cmd_init,
    )
    p.add_argument("--preset", choices=["small", "medium", "large"], default="small")
    p.add_argument("--output", required=True, help="directory to write (HF layout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--safetensors", action="store_true", help="also write a PyTorch-layout model.safetensors")

    p = _add_command(
        subparsers,
        "convert",
        "Load any supported checkpoint and write it in HF's TF layout.",
        """
        tfdialogpt convert --model microsoft/DialoGPT-small --output ./dialogpt-small
        tfdialogpt convert --model ./pytorch-run --output ./tf-run --safetensors
    """,
        commands.cmd_convert,
    )
    p.add_argument("--model", required=True, help="directory, hub id, or 'default'")
    p.add_argument("--output", required=True, help="directory to write")
    p.add_argument("--safetensors", action="store_true", help="also write a PyTorch-layout model.safetensors")
    p.add_argument("--no-tokenizer", action="store_true", help="do not copy the tokenizer files")

    p = _add_command(
        subparsers,
        "tokenize",
        "Print the token ids of a text or a dialogue.",
        """
        tfdialogpt tokenize --model microsoft/DialoGPT-small "Hello world"
        tfdialogpt tokenize --dialogue "Hi!" "Hello, how are you?"
    """,
        commands.cmd_tokenize,
    )
    p.add_argument("turns", nargs="+", help="text (or turns with --dialogue)")
    p.add_argument("--model", default="default", help="directory, hub id, or 'default'")
    p.add_argument("--dialogue", action="store_true", help="encode as DialoGPT turns joined by <|endoftext|>")
    p.add_argument("--max-length", type=int, default=None, help="drop the oldest turns to fit")

    p = _add_command(
        subparsers,
        "generate",
        "One reply to a dialogue history.",
        """
        tfdialogpt generate "Hello"
        tfdialogpt generate --model microsoft/DialoGPT-medium "Does money buy happiness?"
        tfdialogpt generate --model microsoft/DialoGPT-medium --quantize int8 "Does money buy happiness?"
        tfdialogpt generate --json '["Hi!", "Hello, how are you?", "Fine, thanks. And you?"]' \\
            --do-sample --top-p 0.9 --seed 0
        echo '{"turns": ["Hello"]}' | tfdialogpt generate --json -
    """,
        commands.cmd_generate,
    )
    p.add_argument("turns", nargs="*", metavar="TURN", help="the history, oldest turn first")
    p.add_argument("--json", default=None, help="the history as JSON: a list of turns, a file, or - for stdin")
    _add_model_arguments(p, server=True)
    _add_sampling_arguments(p)

    p = _add_command(
        subparsers,
        "chat",
        "Chat in the terminal (or line by line from a pipe).",
        """
        tfdialogpt chat
        tfdialogpt chat --model microsoft/DialoGPT-medium --do-sample --top-p 0.9
        tfdialogpt chat --server localhost:8500                   # a served export: text in, text out
        printf 'Hello\\nHow are you?\\n' | tfdialogpt chat
      in the chat: /reset clears the history, /quit or Ctrl-D leaves
    """,
        commands.cmd_chat,
    )
    _add_model_arguments(p, server=True)
    _add_sampling_arguments(p)

    p = _add_command(
        subparsers,
        "prepare",
        "Tokenize dialogue files once, in parallel, into TFRecord shards and a manifest.json.",
        """
        tfdialogpt prepare --train train.tsv --output ./prepared
        tfdialogpt prepare --train data/ more.jsonl --output ./prepared --tokenizer microsoft/DialoGPT-small \\
            --max-seq-len 256 --workers 8 --shard-size 50000
      run it again with the same arguments to finish a killed run; formats as for finetune
    """,
        commands.cmd_prepare,
    )
    p.add_argument("--train", nargs="+", required=True, metavar="FILE", help="data files or directories, in order")
    p.add_argument("--output", required=True, help="directory for the shards and manifest.json")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", default="default", help="tokenizer and positions of this model (default: default)")
    source.add_argument("--tokenizer", default=None, help="tokenizer directory or hub id instead of a model's")
    p.add_argument("--max-seq-len", type=int, default=None, help="default: min(128, the model's positions)")
    p.add_argument("--workers", type=int, default=None, help="tokenizing processes (default: the CPUs)")
    p.add_argument("--shard-size", type=int, default=100_000, help="examples per shard")
    p.add_argument("--strict", action="store_true", help="fail on any malformed data line")
    p.add_argument("--overwrite", action="store_true", help="replace another prepare run's output in --output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = _add_command(
        subparsers,
        "finetune",
        "Fine-tune (or train) on dialogues; writes an HF-layout checkpoint.",
        """
        tfdialogpt finetune --train chats.jsonl --output ./my-bot
        tfdialogpt finetune --model microsoft/DialoGPT-small --train train.tsv --valid valid.tsv \\
            --output ./run --epochs 3 --batch-size 8 --learning-rate 5e-5 --precision auto
      formats by extension: .tsv (DialoGPT: w src1 EOS w src2<TAB>w tgt), .jsonl ({"turns": [...]}), .yml (chatterbot),
      .json (Chit-Chat Challenge: {"<id>": {"messages": [[{"text", "sender"}, ...], ...]}})
    """,
        commands.cmd_finetune,
    )
    p.add_argument("--model", default="default", help="directory, hub id, or 'default'")
    p.add_argument(
        "--train",
        required=True,
        help="a directory `tfdialogpt prepare` wrote (streamed), or a data file or directory (read whole)",
    )
    p.add_argument("--valid", default=None, help="validation data, as --train (loss and perplexity each epoch)")
    p.add_argument(
        "--output",
        required=True,
        help="directory for the trained model, backups and logs: new, empty, or a killed run's (it resumes)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into --output even if it is --model's directory or holds other files",
    )
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--warmup-steps", type=int, default=None, help="default: 10%% of the updates")
    p.add_argument("--decay", choices=["linear", "cosine", "noam", "constant"], default="linear")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--clip-norm", type=float, default=1.0, help="global gradient norm clip (0: none)")
    p.add_argument("--accumulation-steps", type=int, default=1)
    p.add_argument(
        "--max-seq-len", type=int, default=None, help="default: min(128, the model's positions); prepared data's own"
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=TrainingSettings.max_steps,
        help="stop after N optimizer updates (default: all epochs)",
    )
    p.add_argument(
        "--shuffle-buffer",
        type=int,
        default=TrainingSettings.shuffle_buffer,
        help="examples a prepared epoch is shuffled over (0: file order; default %(default)s)",
    )
    p.add_argument(
        "--stream-files",
        action="store_true",
        default=TrainingSettings.stream_files,
        help="prepare plain --train/--valid files under OUTPUT/prepared (resumable) and stream them, not read whole",
    )
    p.add_argument(
        "--precision",
        choices=["float32", "auto", "mixed_bfloat16", "mixed_float16"],
        default="float32",
        help="auto: mixed_float16 on GPU, mixed_bfloat16 on CPU",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=None, help="back up every N batches (default: each epoch)")
    p.add_argument("--backup-dir", default=None, help="default: OUTPUT/backup; a killed run resumes from it")
    p.add_argument("--tensorboard", action="store_true", help="write TensorBoard logs to OUTPUT/logs")
    p.add_argument("--early-stopping-patience", type=int, default=None)
    p.add_argument("--strict", action="store_true", help="fail on any malformed data line")
    p.add_argument("--no-jit", action="store_true", help="train without XLA")
    p.add_argument(
        "--strategy",
        choices=["auto", "default", "mirrored", "multi_worker"],
        default="auto",
        help="tf.distribute strategy (multi_worker reads TF_CONFIG)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = _add_command(
        subparsers,
        "evaluate",
        "Perplexity and the paper's reply metrics on dialogues.",
        """
        tfdialogpt evaluate --data valid.jsonl
        tfdialogpt evaluate --model ./my-bot --data test.tsv --max-dialogues 200
    """,
        commands.cmd_evaluate,
    )
    p.add_argument("--model", default="default", help="directory, hub id, or 'default'")
    p.add_argument("--data", required=True, help="data file or directory (.tsv, .jsonl, .yml, .json)")
    p.add_argument("--max-seq-len", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-dialogues", type=int, default=None, help="generate replies for the first N only")
    p.add_argument("--no-generate", action="store_true", help="perplexity only")
    _add_mmi_arguments(p)
    p.add_argument("--mmi-candidates", type=int, default=8, help="with MMI: candidates sampled per reply")
    p.add_argument("--seed", type=int, default=0, help="with MMI: the candidates' sampling seed")
    p.add_argument("--strict", action="store_true", help="fail on any malformed data line")

    p = _add_command(
        subparsers,
        "export",
        "Export a SavedModel in TF Serving's layout (BASE/<version>/).",
        """
        tfdialogpt export --base-path ./models/dialogpt
        tfdialogpt export --model microsoft/DialoGPT-medium --base-path ./models/dialogpt --version 3
    """,
        commands.cmd_export,
    )
    from tfdialogpt.serving.options import add_export_arguments

    add_export_arguments(p, model_default="default")

    from tfdialogpt.serving.server_options import add_arguments as add_server_arguments

    p = _add_command(
        subparsers,
        "serve",
        "Serve exports over TF Serving's gRPC API (PredictionService).",
        """
        tfdialogpt serve --model-base-path ./models/dialogpt --model-name dialogpt --port 8500
        tfdialogpt serve --model-config-file serving/models.config \\
            --batching-parameters-file serving/batching_parameters.txt
      stops cleanly on SIGTERM / Ctrl-C; new version directories are picked up while serving
    """,
        commands.cmd_serve,
    )
    add_server_arguments(p)

    p = _add_command(
        subparsers,
        "demo",
        "End to end: export the default model, serve it, chat through gRPC.",
        """
        tfdialogpt demo
        tfdialogpt demo --turn "Hello" --turn "What is your name?"
    """,
        commands.cmd_demo,
    )
    p.add_argument("--workdir", default=None, help="where the export goes (default: a temporary directory)")
    p.add_argument("--turn", action="append", help="a user turn of the scripted conversation (repeatable)")
    p.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    return parser


def _version() -> str:
    from tfdialogpt import __version__

    return f"tfdialogpt {__version__}"


def _expected_errors() -> tuple[type[BaseException], ...]:
    from tfdialogpt.checkpoint import CheckpointError
    from tfdialogpt.config import ConfigError
    from tfdialogpt.serving.errors import ServingError
    from tfdialogpt.tokenizer import TokenizerError

    return (
        CheckpointError,
        ConfigError,
        TokenizerError,
        ServingError,
        ValueError,
        FileNotFoundError,
        FileExistsError,
        PermissionError,
    )


# Commands that never load TensorFlow (the others import it quietly first: `_quiet`).
_TF_FREE_COMMANDS = {"tokenize"}


def _needs_tensorflow(args) -> bool:
    if args.command in _TF_FREE_COMMANDS or (args.command == "info" and not args.check):
        return False
    served = args.command in ("chat", "generate") and getattr(args, "server", None)
    mmi = getattr(args, "mmi_model", None) or getattr(args, "mmi", False)
    return not served or bool(mmi)  # MMI's reverse model runs here


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if _needs_tensorflow(args):
            from tfdialogpt._quiet import import_tensorflow

            import_tensorflow()
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _expected_errors() as err:
        print(f"tfdialogpt {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
