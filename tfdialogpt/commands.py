"""What each `tfdialogpt` command does: thin calls into the library (`cli.py` parses)."""

from __future__ import annotations

import json
import os
import sys


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
        info["loaded"] = "every tensor present, shaped as the config says and finite"
    print(json.dumps(info, indent=2))
    return 0


def cmd_init(args) -> int:
    import keras

    from tfdialogpt import DialoGPT, DialoGPTConfig

    keras.utils.set_random_seed(args.seed)
    config = DialoGPTConfig.preset(args.preset)
    DialoGPT(config).save_pretrained(args.output, safe_serialization=args.safetensors)
    print(
        f"wrote a randomly initialised DialoGPT-{args.preset} ({config.num_parameters:,} parameters) to {args.output}"
    )
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
    ids = (
        tokenizer.encode_dialogue(args.turns, max_length=args.max_length)
        if args.dialogue
        else tokenizer.encode(" ".join(args.turns))
    )
    print(json.dumps(ids))
    return 0


# Settings without a flag: the model's own ids are right for the CLI's models.
NO_FLAG = ("eos_token_id", "pad_token_id")


def _generation_settings(args) -> dict:
    """The `GenerationConfig` settings given on the command line (the others keep defaults)."""
    from tfdialogpt.generation_config import SETTINGS

    return {name: getattr(args, name) for name in SETTINGS if getattr(args, name, None) is not None}


def _utf8(text: str, where: str) -> str:
    """`text` if it is valid UTF-8; undecodable bytes (lone surrogates in a str) are an error."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{where} is not valid UTF-8 (byte 0x{ord(text[err.start]) & 0xFF:02x} at position {err.start})"
        ) from None
    return text


def _history_from_args(args) -> list[str]:
    if args.json is not None:
        if args.json == "-":
            text = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
        elif os.path.isfile(args.json):
            with open(args.json, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        else:
            text = args.json
        text = _utf8(text, "the --json input")
        try:
            history = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--json is not valid JSON: {err}") from None
        if isinstance(history, dict):
            history = history.get("turns")
        if not isinstance(history, list) or not all(isinstance(t, str) for t in history):
            raise ValueError('--json must hold a list of turns (strings) or {"turns": [...]}')
        return history
    return [_utf8(turn, f"turn {i + 1}") for i, turn in enumerate(args.turns)]


def cmd_generate(args) -> int:

    history = _history_from_args(args)
    if not history:
        raise ValueError("give the dialogue history as TURN arguments or with --json")
    chat = _make_chat(args, history=history[:-1])
    print(chat.reply(history[-1]))
    return 0


def _mmi_model(args):
    """The reverse model asked for: `--mmi-model`, or with `--mmi` the one beside `--model`."""
    if getattr(args, "mmi", False):
        from tfdialogpt.checkpoint_files import reverse_model_dir

        return reverse_model_dir(args.model)
    return getattr(args, "mmi_model", None)


def _make_chat(args, history=()):
    from tfdialogpt.chat import MMI, Chat, LocalBackend, ServedChat
    from tfdialogpt.tokenizer import Tokenizer

    settings = _generation_settings(args)
    mmi_model = _mmi_model(args)
    if getattr(args, "server", None):
        from tfdialogpt.serving.client import Client

        if args.quantize:
            raise ValueError(
                "--quantize applies to a local model; a served model's weights are chosen when "
                "it is exported (tfdialogpt export --quantize int8)"
            )
        if not mmi_model:  # text to the export's chat signature: no tokenizer, no config here
            client = Client(args.server, args.model_name, timeout=args.timeout)
            client.wait_until_available(timeout=args.timeout)
            return ServedChat(client, history=history, **settings)
        from tfdialogpt.checkpoint import load_config

        # MMI reranks ids: the history is tokenized here and sent to the generate signature.
        config = load_config(args.model)  # the served model's positions and EOS id; no weights read
        tokenizer = Tokenizer.from_pretrained(args.tokenizer or args.model)
        if tokenizer.vocab_size > config.vocab_size:
            raise ValueError(
                f"the tokenizer has {tokenizer.vocab_size} ids but --model {args.model}'s config only "
                f"{config.vocab_size}: with --server and --mmi-model, --model names the served model's "
                "directory or hub id (its config and tokenizer; no weights are read)"
            )
        backend = Client(
            args.server,
            args.model_name,
            tokenizer=tokenizer,
            timeout=args.timeout,
            max_positions=config.max_positions,
            eos_token_id=config.eos_token_id,
        )
        backend.wait_until_available(timeout=args.timeout)
    else:
        from tfdialogpt import DialoGPT

        tokenizer = Tokenizer.from_pretrained(args.tokenizer or args.model)
        backend = DialoGPT.from_pretrained(args.model, quantize=args.quantize)
        if args.no_xla:
            backend = LocalBackend(backend, jit_compile=False)
    mmi = None
    if mmi_model:
        from tfdialogpt import DialoGPT

        mmi = MMI(
            DialoGPT.from_pretrained(mmi_model),
            num_candidates=args.mmi_candidates,
            temperature=args.mmi_temperature,
            seed=args.seed,
        )
    return Chat(backend, tokenizer, mmi=mmi, history=history, **settings)


CHAT_HELP = "type a message and press Enter; /reset starts over, /quit (or Ctrl-D) leaves"


def cmd_chat(args) -> int:
    chat = _make_chat(args)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"tfdialogpt chat ({args.server or args.model}): {CHAT_HELP}", flush=True)
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        raw = sys.stdin.buffer.readline()
        if not raw:  # Ctrl-D or the end of a pipe
            if interactive:
                print()
            return 0
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as err:
            print(
                f"error: that line is not valid UTF-8 (byte 0x{raw[err.start]:02x} at position {err.start}); "
                "it was skipped, the conversation goes on",
                flush=True,
            )
            continue
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


def cmd_prepare(args) -> int:
    from tfdialogpt.training.prepare import max_seq_len_for, prepare

    manifest = prepare(
        args.train,
        args.output,
        args.tokenizer or args.model,
        max_seq_len=max_seq_len_for(None if args.tokenizer else args.model, args.max_seq_len),
        workers=args.workers,
        shard_size=args.shard_size,
        strict=args.strict,
        overwrite=args.overwrite,
        progress=False if args.quiet else None,
    )
    print(json.dumps({"output": args.output, "shards": len(manifest["shards"]), **manifest["totals"]}, indent=2))
    return 0


def cmd_finetune(args) -> int:
    from tfdialogpt.training.fit import finetune

    result = finetune(
        args.model,
        args.train,
        args.valid,
        args.output,
        overwrite=args.overwrite,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        decay=args.decay,
        weight_decay=args.weight_decay,
        clip_norm=args.clip_norm or None,
        accumulation_steps=args.accumulation_steps,
        max_seq_len=args.max_seq_len,
        max_steps=args.max_steps,
        shuffle_buffer=args.shuffle_buffer,
        stream_files=args.stream_files,
        precision=args.precision,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        backup_dir=args.backup_dir,
        tensorboard=args.tensorboard,
        early_stopping_patience=args.early_stopping_patience,
        strict=args.strict,
        jit_compile=False if args.no_jit else "auto",
        strategy=args.strategy,
        verbose=0 if args.quiet else "auto",
    )
    last = {name: round(values[-1], 4) for name, values in result.history.items() if values}
    malformed = len(result.train_issues) + len(result.valid_issues)
    print(json.dumps({"output": args.output, "final": last, "malformed_lines": malformed}, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    from tfdialogpt.training.evaluation import evaluate

    results = evaluate(
        args.model,
        args.data,
        max_seq_len=args.max_seq_len,
        batch_size=args.batch_size,
        generate=not args.no_generate,
        max_new_tokens=args.max_new_tokens,
        max_dialogues=args.max_dialogues,
        strict=args.strict,
        mmi_model=_mmi_model(args),
        mmi_candidates=args.mmi_candidates,
        seed=args.seed,
    )
    print(json.dumps(results, indent=2, default=str))
    return 0


def cmd_export(args) -> int:
    from tfdialogpt.serving.export import export_from_args

    result = export_from_args(args)
    print(result.path)
    return 0


def cmd_serve(args) -> int:
    import logging

    from tfdialogpt.serving.grpc_services import serve
    from tfdialogpt.serving.server_options import server_from_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve(server_from_args(args), grace=args.grace, exit_process=True)


def cmd_demo(args) -> int:
    from tfdialogpt.demo import run_demo

    return run_demo(args.workdir, turns=args.turn or None, port=args.port)
