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


def _sampling_kwargs(args) -> dict:
    kwargs = dict(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )
    # Options only a local model has; a served export rejects them clearly if set.
    for name in ("no_repeat_ngram_size", "min_new_tokens", "num_beams", "length_penalty"):
        default = 1.0 if name == "length_penalty" else (1 if name == "num_beams" else 0)
        if getattr(args, name) != default:
            kwargs[name] = getattr(args, name)
    if getattr(args, "no_xla", False):
        kwargs["jit_compile"] = False
    return kwargs


def _history_from_args(args) -> list[str]:
    if args.json is not None:
        text = sys.stdin.read() if args.json == "-" else (
            open(args.json, encoding="utf-8").read() if os.path.isfile(args.json) else args.json)
        try:
            history = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--json is not valid JSON: {err}") from None
        if isinstance(history, dict):
            history = history.get("turns")
        if not isinstance(history, list) or not all(isinstance(t, str) for t in history):
            raise ValueError('--json must hold a list of turns (strings) or {"turns": [...]}')
        return history
    return list(args.turns)


def cmd_generate(args) -> int:

    history = _history_from_args(args)
    if not history:
        raise ValueError("give the dialogue history as TURN arguments or with --json")
    chat = _make_chat(args, history=history[:-1])
    print(chat.reply(history[-1]))
    return 0


def _make_chat(args, history=()):
    from tfdialogpt.chat import MMI, Chat
    from tfdialogpt.tokenizer import Tokenizer

    sampling = _sampling_kwargs(args)
    max_new_tokens = sampling.pop("max_new_tokens")
    if getattr(args, "server", None):
        from tfdialogpt.serving.client import Client

        if args.quantize:
            raise ValueError("--quantize applies to a local model; a served model's weights are chosen when "
                             "it is exported (tfdialogpt export --quantize int8)")
        from tfdialogpt.checkpoint import load_config

        config = load_config(args.model)  # the served model's positions and EOS id; no weights read
        tokenizer = Tokenizer.from_pretrained(args.tokenizer or args.model)
        if tokenizer.vocab_size > config.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but --model {args.model}'s config only "
                             f"{config.vocab_size}: with --server, --model names the served model's directory or "
                             "hub id (its config and tokenizer; no weights are read)")
        sampling.pop("jit_compile", None)
        backend = Client(args.server, args.model_name, tokenizer=tokenizer, timeout=args.timeout,
                         max_positions=config.max_positions, eos_token_id=config.eos_token_id)
        backend.wait_until_available(timeout=args.timeout)
    else:
        from tfdialogpt import DialoGPT

        tokenizer = Tokenizer.from_pretrained(args.tokenizer or args.model)
        backend = DialoGPT.from_pretrained(args.model, quantize=args.quantize)
    mmi = None
    if getattr(args, "mmi_model", None):
        from tfdialogpt import DialoGPT

        mmi = MMI(DialoGPT.from_pretrained(args.mmi_model), num_candidates=args.mmi_candidates,
                  temperature=args.mmi_temperature, seed=args.seed)
    return Chat(backend, tokenizer, max_new_tokens=max_new_tokens, mmi=mmi, history=history, **sampling)


CHAT_HELP = "type a message and press Enter; /reset starts over, /quit (or Ctrl-D) leaves"


def cmd_chat(args) -> int:
    chat = _make_chat(args)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"tfdialogpt chat ({args.server or args.model}): {CHAT_HELP}", flush=True)
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:  # Ctrl-D or the end of a pipe
            if interactive:
                print()
            return 0
        text = line.strip()
        if not text:
            continue
        if text == "/quit":
            return 0
        if text == "/reset":
            chat.reset()
            print("(history cleared)", flush=True)
            continue
        if text.startswith("/"):
            print(f"unknown command {text}; {CHAT_HELP}", flush=True)
            continue
        try:
            reply = chat.reply(text)
        except ValueError as err:  # e.g. a turn longer than the context budget
            print(f"error: {err}", flush=True)
            continue
        print(f"bot> {reply}", flush=True)


def cmd_finetune(args) -> int:
    from tfdialogpt.training.fit import finetune

    result = finetune(
        args.model, args.train, args.valid, args.output,
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps, decay=args.decay, weight_decay=args.weight_decay,
        clip_norm=args.clip_norm or None, accumulation_steps=args.accumulation_steps,
        max_seq_len=args.max_seq_len, precision=args.precision, seed=args.seed,
        checkpoint_every=args.checkpoint_every, backup_dir=args.backup_dir, tensorboard=args.tensorboard,
        early_stopping_patience=args.early_stopping_patience, strict=args.strict,
        jit_compile=False if args.no_jit else "auto", strategy=args.strategy, verbose=0 if args.quiet else "auto",
    )
    last = {name: round(values[-1], 4) for name, values in result.history.items() if values}
    malformed = len(result.train_issues) + len(result.valid_issues)
    print(json.dumps({"output": args.output, "final": last, "malformed_lines": malformed}, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    from tfdialogpt.training.evaluation import evaluate

    results = evaluate(args.model, args.data, max_seq_len=args.max_seq_len, batch_size=args.batch_size,
                       generate=not args.no_generate, max_new_tokens=args.max_new_tokens,
                       max_dialogues=args.max_dialogues, strict=args.strict)
    print(json.dumps(results, indent=2, default=str))
    return 0


def cmd_export(args) -> int:
    from tfdialogpt.serving.export import export_from_args

    result = export_from_args(args)
    print(result.path)
    return 0


def cmd_serve(args) -> int:
    import logging

    from tfdialogpt.serving.server import serve, server_from_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve(server_from_args(args), grace=args.grace)


def cmd_demo(args) -> int:
    from tfdialogpt.demo import run_demo

    return run_demo(args.workdir, turns=args.turn or None, port=args.port)


def _add_sampling_arguments(p) -> None:
    g = p.add_argument_group("decoding")
    g.add_argument("--max-new-tokens", type=int, default=40, help="reply length cap (default 40)")
    g.add_argument("--min-new-tokens", type=int, default=0, help="suppress EOS before this many tokens")
    g.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1]")
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--no-repeat-ngram-size", type=int, default=0)
    g.add_argument("--num-beams", type=int, default=1, help="beam search width (local models)")
    g.add_argument("--length-penalty", type=float, default=1.0, help="beam search length penalty")
    g.add_argument("--seed", type=int, default=None, help="seed for sampling (same seed, same reply)")
    g.add_argument("--no-xla", action="store_true", help="decode without XLA (jit_compile=False)")


def _add_model_arguments(p, server: bool) -> None:
    from tfdialogpt.quantization import MODES

    p.add_argument("--model", default="default", help="directory, hub id, or 'default' (embedded model)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory or hub id (default: --model)")
    p.add_argument("--mmi-model", default=None, help="reverse model for MMI reranking (directory or hub id)")
    p.add_argument("--mmi-candidates", type=int, default=8, help="candidates sampled for MMI")
    p.add_argument("--mmi-temperature", type=float, default=None, help="sample by softmax(score/T) instead of argmax")
    p.add_argument("--quantize", choices=MODES, default=None,
                   help="int8 weights: faster generation on CPU at a small accuracy cost")
    if server:
        p.add_argument("--server", metavar="HOST:PORT", default=None,
                       help="chat through a served model instead (--model then names its config and tokenizer; "
                            "no weights are read)")
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

    p = _add_command(subparsers, "generate", "One reply to a dialogue history.", """
        tfdialogpt generate "Hello"
        tfdialogpt generate --model microsoft/DialoGPT-medium "Does money buy happiness?"
        tfdialogpt generate --model microsoft/DialoGPT-medium --quantize int8 "Does money buy happiness?"
        tfdialogpt generate --json '["Hi!", "Hello, how are you?", "Fine, thanks. And you?"]' --do-sample --top-p 0.9 --seed 0
        echo '{"turns": ["Hello"]}' | tfdialogpt generate --json -
    """, cmd_generate)
    p.add_argument("turns", nargs="*", metavar="TURN", help="the history, oldest turn first")
    p.add_argument("--json", default=None, help="the history as JSON: a list of turns, a file, or - for stdin")
    _add_model_arguments(p, server=True)
    _add_sampling_arguments(p)

    p = _add_command(subparsers, "chat", "Chat in the terminal (or line by line from a pipe).", """
        tfdialogpt chat
        tfdialogpt chat --model microsoft/DialoGPT-medium --do-sample --top-p 0.9
        tfdialogpt chat --server localhost:8500 --model microsoft/DialoGPT-medium   # its config and tokenizer
        printf 'Hello\\nHow are you?\\n' | tfdialogpt chat
      in the chat: /reset clears the history, /quit or Ctrl-D leaves
    """, cmd_chat)
    _add_model_arguments(p, server=True)
    _add_sampling_arguments(p)

    p = _add_command(subparsers, "finetune", "Fine-tune (or train) on dialogues; writes an HF-layout checkpoint.", """
        tfdialogpt finetune --train chats.jsonl --output ./my-bot
        tfdialogpt finetune --model microsoft/DialoGPT-small --train train.tsv --valid valid.tsv \\
            --output ./run --epochs 3 --batch-size 8 --learning-rate 5e-5 --precision auto
      formats by extension: .tsv (DialoGPT: w src1 EOS w src2<TAB>w tgt), .jsonl ({"turns": [...]}), .yml (chatterbot)
    """, cmd_finetune)
    p.add_argument("--model", default="default", help="directory, hub id, or 'default'")
    p.add_argument("--train", required=True, help="training data file or directory")
    p.add_argument("--valid", default=None, help="validation data (loss and perplexity each epoch)")
    p.add_argument("--output", required=True, help="directory for the trained model, backups and logs")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--warmup-steps", type=int, default=None, help="default: 10%% of the updates")
    p.add_argument("--decay", choices=["linear", "cosine", "noam", "constant"], default="linear")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--clip-norm", type=float, default=1.0, help="global gradient norm clip (0: none)")
    p.add_argument("--accumulation-steps", type=int, default=1)
    p.add_argument("--max-seq-len", type=int, default=None, help="default: min(128, the model's positions)")
    p.add_argument("--precision", choices=["float32", "auto", "mixed_bfloat16", "mixed_float16"], default="float32",
                   help="auto: mixed_float16 on GPU, mixed_bfloat16 on CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=None, help="back up every N batches (default: each epoch)")
    p.add_argument("--backup-dir", default=None, help="default: OUTPUT/backup; a killed run resumes from it")
    p.add_argument("--tensorboard", action="store_true", help="write TensorBoard logs to OUTPUT/logs")
    p.add_argument("--early-stopping-patience", type=int, default=None)
    p.add_argument("--strict", action="store_true", help="fail on any malformed data line")
    p.add_argument("--no-jit", action="store_true", help="train without XLA")
    p.add_argument("--strategy", choices=["auto", "default", "mirrored", "multi_worker"], default="auto",
                   help="tf.distribute strategy (multi_worker reads TF_CONFIG)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = _add_command(subparsers, "evaluate", "Perplexity and the paper's reply metrics on dialogues.", """
        tfdialogpt evaluate --data valid.jsonl
        tfdialogpt evaluate --model ./my-bot --data test.tsv --max-dialogues 200
    """, cmd_evaluate)
    p.add_argument("--model", default="default", help="directory, hub id, or 'default'")
    p.add_argument("--data", required=True, help="data file or directory (.tsv, .jsonl, .yml)")
    p.add_argument("--max-seq-len", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-dialogues", type=int, default=None, help="generate replies for the first N only")
    p.add_argument("--no-generate", action="store_true", help="perplexity only")
    p.add_argument("--strict", action="store_true", help="fail on any malformed data line")

    p = _add_command(subparsers, "export", "Export a SavedModel in TF Serving's layout (BASE/<version>/).", """
        tfdialogpt export --base-path ./models/dialogpt
        tfdialogpt export --model microsoft/DialoGPT-medium --base-path ./models/dialogpt --version 3
    """, cmd_export)
    from tfdialogpt.serving.options import add_export_arguments

    add_export_arguments(p, model_default="default")

    from tfdialogpt.serving.server import add_arguments as add_server_arguments

    p = _add_command(subparsers, "serve", "Serve exports over TF Serving's gRPC API (PredictionService).", """
        tfdialogpt serve --model-base-path ./models/dialogpt --model-name dialogpt --port 8500
        tfdialogpt serve --model-config-file serving/models.config --batching-parameters-file serving/batching_parameters.txt
      stops cleanly on SIGTERM / Ctrl-C; new version directories are picked up while serving
    """, cmd_serve)
    add_server_arguments(p)

    p = _add_command(subparsers, "demo", "End to end: export the default model, serve it, chat through gRPC.", """
        tfdialogpt demo
        tfdialogpt demo --turn "Hello" --turn "What is your name?"
    """, cmd_demo)
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
    from tfdialogpt.serving.client import ServingError
    from tfdialogpt.tokenizer import TokenizerError

    return (CheckpointError, ConfigError, TokenizerError, ServingError, ValueError, FileNotFoundError,
            FileExistsError, PermissionError)


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
