"""The `tfdialogpt` command line: argument parsing only; the work happens in library calls."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap

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


# ---- commands ------------------------------------------------------------------------------------


def cmd_info(args) -> int:
    from tfdialogpt.checkpoint import resolve
    from tfdialogpt.config import DialoGPTConfig

    config_path, weights_path = resolve(args.model)
    config = DialoGPTConfig.from_json_file(config_path)
    info = {
        "model": str(args.model),
        "config": str(config_path),
        "weights": str(weights_path),
        "layers": config.num_layers,
        "hidden_size": config.hidden_size,
        "heads": config.num_heads,
        "vocab_size": config.vocab_size,
        "max_positions": config.max_positions,
        "parameters": config.num_parameters,
    }
    if args.check:
        from tfdialogpt import DialoGPT

        DialoGPT.from_pretrained(args.model)
        info["loaded"] = "every tensor present and shaped as the config says"
    print(json.dumps(info, indent=2))
    return 0


def cmd_init(args) -> int:
    import keras

    from tfdialogpt import DialoGPT, DialoGPTConfig

    keras.utils.set_random_seed(args.seed)
    config = DialoGPTConfig.preset(args.preset)
    DialoGPT(config).save_pretrained(args.output, safe_serialization=args.safetensors)
    print(f"wrote a randomly initialised DialoGPT-{args.preset} ({config.num_parameters:,} parameters) to {args.output}")
    return 0


def cmd_convert(args) -> int:
    from tfdialogpt import DialoGPT

    model = DialoGPT.from_pretrained(args.model)
    tokenizer = None
    if not args.no_tokenizer:
        from tfdialogpt.tokenizer import Tokenizer, TokenizerError

        try:
            tokenizer = Tokenizer.from_pretrained(args.model)
        except TokenizerError as err:
            print(f"note: no tokenizer copied ({err})", file=sys.stderr)
    model.save_pretrained(args.output, safe_serialization=args.safetensors, tokenizer=tokenizer)
    written = sorted(os.listdir(args.output))
    print(f"wrote {', '.join(written)} to {args.output}")
    return 0


def cmd_tokenize(args) -> int:
    from tfdialogpt.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(args.model)
    ids = tokenizer.encode_dialogue(args.turns, max_length=args.max_length) if args.dialogue else tokenizer.encode(" ".join(args.turns))
    print(json.dumps(ids))
    return 0


# ---- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfdialogpt",
        description="DialoGPT in TensorFlow/Keras: load, convert, generate, fine-tune and serve.",
        formatter_class=_formatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _add_command(subparsers, "info", "Show a checkpoint's architecture and files.", """
        tfdialogpt info --model microsoft/DialoGPT-medium
        tfdialogpt info --model ./my-checkpoint --check
    """, cmd_info)
    p.add_argument("--model", default="default", help="directory, hub id, or 'default' (embedded model)")
    p.add_argument("--check", action="store_true", help="also load every tensor strictly")

    p = _add_command(subparsers, "init", "Write a randomly initialised model of a DialoGPT shape.", """
        tfdialogpt init --preset small --output ./dialogpt-small-random
    """, cmd_init)
    p.add_argument("--preset", choices=["small", "medium", "large"], default="small")
    p.add_argument("--output", required=True, help="directory to write (HF layout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--safetensors", action="store_true", help="also write a PyTorch-layout model.safetensors")

    p = _add_command(subparsers, "convert", "Load any supported checkpoint and write it in HF's TF layout.", """
        tfdialogpt convert --model microsoft/DialoGPT-small --output ./dialogpt-small
        tfdialogpt convert --model ./pytorch-run --output ./tf-run --safetensors
    """, cmd_convert)
    p.add_argument("--model", required=True, help="directory, hub id, or 'default'")
    p.add_argument("--output", required=True, help="directory to write")
    p.add_argument("--safetensors", action="store_true", help="also write a PyTorch-layout model.safetensors")
    p.add_argument("--no-tokenizer", action="store_true", help="do not copy the tokenizer files")

    p = _add_command(subparsers, "tokenize", "Print the token ids of a text or a dialogue.", """
        tfdialogpt tokenize --model microsoft/DialoGPT-small "Hello world"
        tfdialogpt tokenize --dialogue "Hi!" "Hello, how are you?"
    """, cmd_tokenize)
    p.add_argument("turns", nargs="+", help="text (or turns with --dialogue)")
    p.add_argument("--model", default="default", help="directory, hub id, or 'default'")
    p.add_argument("--dialogue", action="store_true", help="encode as DialoGPT turns joined by <|endoftext|>")
    p.add_argument("--max-length", type=int, default=None, help="drop the oldest turns to fit")
    return parser


def _version() -> str:
    from tfdialogpt import __version__

    return f"tfdialogpt {__version__}"


def _expected_errors() -> tuple[type[BaseException], ...]:
    from tfdialogpt.checkpoint import CheckpointError
    from tfdialogpt.config import ConfigError

    return (CheckpointError, ConfigError, ValueError, FileNotFoundError, PermissionError)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _expected_errors() as err:
        print(f"tfdialogpt {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
