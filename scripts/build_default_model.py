"""Rebuilds the embedded default model, `tfdialogpt/assets/default/`, deterministically.

A small DialoGPT-architecture model trained from scratch, by this package's own pipeline
(`tfdialogpt.training.fit`), with its own byte-level BPE trained by `tokenizers`, on
`--corpus`: `ccc`, the Chit-Chat Challenge corpus (MIT, `pip install chitchat-dataset==0.9.0`),
`chatterbot`, the English chatterbot-corpus (BSD, `pip install chatterbot-corpus==1.3.3
--no-deps`), or `both`:

1. read the corpus with `read_dialogues` (conversations it cannot use are counted in the
   report), drop duplicate conversations, hold out every whole conversation whose seeded
   rank falls in the validation share, and cut long ones into windows of at most `--window`
   turns (one turn of overlap); `--max-train N` keeps a seeded sample of N training windows;
2. train a GPT-2-style byte-level BPE on the training turns, `<|endoftext|>` as the last id;
3. train the model with `finetune` (seeded data order and init, the train step under XLA), and
   write config.json, tf_model.h5 (`--weights-dtype`, float16: half the bytes; loading gives
   float32) and the tokenizer files;
4. score the written model, and `--compare` (today's default), on the same held-out CCC
   windows: `evaluate`'s token perplexity (comparable only between models with one
   tokenizer), the perplexity per word of each window's last turn (comparable across
   tokenizers), and BLEU-2/4, NIST, Dist-1/2, Entropy-4 and average length of greedy replies
   on a seeded sample; and greedy replies to twenty everyday openers, side by side;
5. train the reverse model for MMI (the paper's backward model, log P(source | reply)) on the
   same training windows with their turns in reverse order, the reply's own turn not a
   target, with the same tokenizer, shape and settings, into `reverse/`, starting from the
   forward model's weights (`--reverse-from`: the language is the same, only the direction
   differs, as the paper starts both from GPT-2) for `--reverse-epochs`; score it, and the
   forward model's MMI replies (`evaluate(..., mmi_model=)`) with the same metrics and on the
   openers (`--no-reverse`: skip);
6. write `build_report.json` (data, split, settings, curves, metrics, replies) beside each.

Same seed, same machine type: same bytes. XLA's CPU code runs its reductions in a fixed order, so
the XLA train step is as reproducible as TF's deterministic ops (two builds of the same settings
wrote the same bytes) and 1.24x as fast here; `tf.config.experimental.enable_op_determinism`
would turn XLA off.

    python scripts/build_default_model.py              # writes tfdialogpt/assets/default/
    python scripts/build_default_model.py --output /tmp/default --max-train 2000 --epochs 1   # a quick try
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "tfdialogpt" / "assets" / "default"
OPENERS = [
    "Hello",
    "Hi",
    "How are you?",
    "Good morning, how are you?",
    "What is your name?",
    "Do you like movies?",
    "Tell me a joke",
    "What is AI?",
    "Bye",
    "Good night",
    "Do you like music?",
    "What do you do for fun?",
    "Where are you from?",
    "What did you do today?",
    "Do you have any pets?",
    "What is your favorite food?",
    "How was your weekend?",
    "What are you studying?",
    "Do you play any sports?",
    "Have a nice day!",
]
MAX_BYTES = 20 * 1024 * 1024
REPLY_MAX_WORDS = 40  # longest newest-context turn and reference in the reply sample
CHECK_WINDOWS = 256  # the first held-out CCC windows, scored again by tests/test_default_model.py
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
KEPT_FILES = ("config.json", "tf_model.h5", *TOKENIZER_FILES)


CORPORA = {
    "chatterbot": "chatterbot-corpus 1.3.3, English (BSD)",
    "ccc": "chitchat-dataset 0.9.0, the BYU PCC lab's Chit-Chat Challenge corpus (MIT)",
}


def corpus_dir() -> Path:
    try:
        import chatterbot_corpus
    except ImportError:
        sys.exit("needs the corpus: pip install chatterbot-corpus==1.3.3 --no-deps")
    return Path(chatterbot_corpus.__file__).parent / "data" / "english"


def ccc_file() -> Path:
    try:
        import chitchat_dataset
    except ImportError:
        sys.exit("needs the corpus: pip install chitchat-dataset==0.9.0")
    return Path(chitchat_dataset.__file__).parent / "dataset.json"


def load_corpus(name: str):
    """(dialogues, issues) of `chatterbot`, `ccc` or `both` (chatterbot's first)."""
    from tfdialogpt.training import read_dialogues

    parts = {"chatterbot": [corpus_dir], "ccc": [ccc_file], "both": [corpus_dir, ccc_file]}[name]
    dialogues, issues = [], []
    for where in parts:
        found = read_dialogues(where())  # chatterbot 1.3.3's trivia.yml:35 is malformed; CCC: see training/ccc.py
        dialogues += found.dialogues
        issues += found.issues
    return dialogues, issues


def windows(turns: tuple[str, ...], size: int) -> list[tuple[str, ...]]:
    """Cuts a long conversation into windows of `size` turns; each starts with the last turn of
    the one before (its context), so every turn but the first is trained once."""
    if len(turns) <= size:
        return [turns]
    return [
        turns[start : start + size]
        for start in range(0, len(turns) - 1, size - 1)
        if len(turns[start : start + size]) >= 2
    ]


def split_corpus(dialogues, valid_share: float, window: int, seed: int):
    """(train, valid) conversations: deduplicated, windowed, split by a seeded hash rank."""
    from tfdialogpt.training import Dialogue

    unique = {}
    for dialogue in dialogues:
        unique.setdefault(tuple(t.lower() for t in dialogue.turns), dialogue)
    train, valid = [], []
    for dialogue in unique.values():
        digest = hashlib.sha256(f"{seed}:{'|'.join(dialogue.turns)}".encode()).digest()
        held_out = int.from_bytes(digest[:8], "big") / 2**64 < valid_share
        for turns in windows(dialogue.turns, window):
            (valid if held_out else train).append(Dialogue.from_turns(turns, None, dialogue.source))
    return train, valid


def held_out_ccc(corpus: str, valid, valid_share: float, window: int, seed: int):
    """The held-out CCC windows every model is scored on, whatever the training corpus: `valid`'s
    CCC windows, or (chatterbot) CCC's own held-out split with the same settings."""
    if corpus == "chatterbot":
        return split_corpus(load_corpus("ccc")[0], valid_share, window, seed)[1]
    return [d for d in valid if d.source.startswith(str(ccc_file()))]


def reply_word_perplexity(model, tokenizer, dialogues, max_seq_len: int) -> dict:
    """Perplexity per word of each dialogue's last turn given the turns before it.

    Token perplexities of models with different tokenizers cannot be compared; the same words
    scored by each model can: NLL summed over the reply's tokens and its EOS, divided by the
    reply's words + 1 (the EOS), over the dialogues both models can score.
    """
    from tfdialogpt.training import Dialogue, evaluate
    from tfdialogpt.training.examples import encode_dialogues

    scored = [
        Dialogue.from_turns(d.turns, [0.0] * (len(d.turns) - 1) + [1.0], f"reply:{i}") for i, d in enumerate(dialogues)
    ]
    skipped = {int(source.rpartition(":")[2]) for source, _ in encode_dialogues(scored, tokenizer, max_seq_len).skipped}
    kept = [d for i, d in enumerate(scored) if i not in skipped]
    scores = evaluate(model, kept, tokenizer=tokenizer, max_seq_len=max_seq_len, generate=False)
    words = sum(len(d.turns[-1].split()) + 1 for d in kept)
    nll = scores["loss"] * scores["tokens"]
    return {"reply_word_perplexity": math.exp(nll / words), "reply_words": words, "scored_replies": len(kept)}


def reply_scores(model, tokenizer, replies_sample, max_seq_len: int, mmi=None) -> tuple[dict, dict]:
    """(reply metrics on the sample, replies to the openers): greedy, or chosen by `mmi`."""
    from tfdialogpt.training import evaluate
    from tfdialogpt.training.evaluation import generate_replies

    sampled = evaluate(
        model, replies_sample, tokenizer=tokenizer, max_seq_len=max_seq_len, max_new_tokens=24, mmi_model=mmi
    )
    metrics = {k: v for k, v in sampled.items() if k not in ("loss", "perplexity", "tokens", "malformed_lines")}
    if mmi is not None:
        from tfdialogpt.chat import MMI

        mmi = MMI(mmi, seed=0)  # evaluate's own MMI settings: 8 candidates, seed 0
    contexts = [[o] for o in OPENERS]
    replies = generate_replies(model, tokenizer, contexts, max_new_tokens=24, max_seq_len=max_seq_len, mmi=mmi)
    return metrics, dict(zip(OPENERS, replies, strict=True))


def score(model, tokenizer, valid, replies_sample, max_seq_len: int) -> dict:
    """`evaluate` on every held-out dialogue (perplexity) and on a sample (reply metrics),
    the reply-word perplexity, and greedy replies to the openers."""
    from tfdialogpt.training import evaluate

    metrics = evaluate(model, valid, tokenizer=tokenizer, max_seq_len=max_seq_len, generate=False)
    sampled, replies = reply_scores(model, tokenizer, replies_sample, max_seq_len)
    metrics.update(sampled)
    metrics.update(reply_word_perplexity(model, tokenizer, valid, max_seq_len))
    return {"metrics": metrics, "greedy_replies": replies}


def reversed_windows(dialogues):
    """The reverse model's data: each window's turns newest first; the first (the reply the
    source is scored given) is context only."""
    from tfdialogpt.training import Dialogue

    return [Dialogue.from_turns(d.turns[::-1], [0.0] + [1.0] * (len(d.turns) - 1), d.source) for d in dialogues]


def most_repeated(replies: dict) -> int:
    """How many openers share the most used reply."""
    return max(Counter(replies.values()).values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--corpus", choices=["ccc", "chatterbot", "both"], default="both")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--dropout", type=float, default=0.0, help="embedding, attention and residual dropout")
    parser.add_argument("--epochs", type=positive(int), default=2)
    parser.add_argument(
        "--reverse-epochs",
        type=positive(float),
        default=0.5,
        help="the reverse model's epochs (a fraction: that share of one)",
    )
    parser.add_argument(
        "--reverse-from",
        choices=["forward", "scratch"],
        default="forward",
        help="the reverse model's initial weights: the trained forward model's, or random",
    )
    parser.add_argument("--patience", type=int, default=None, help="early stopping on validation loss (off)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--valid-share", type=float, default=0.08)
    parser.add_argument("--window", type=int, default=6, help="longest conversation window, in turns")
    parser.add_argument("--max-train", type=int, default=0, help="train on a seeded sample of N windows; 0: all")
    parser.add_argument("--reply-sample", type=int, default=200, help="held-out windows given greedy replies")
    parser.add_argument(
        "--compare",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="model scored beside the new one (today's default); none: no",
    )
    parser.add_argument("--weights-dtype", choices=["float16", "float32"], default="float16")
    parser.add_argument("--no-reverse", action="store_true", help="do not build the reverse (MMI) model")
    parser.add_argument(
        "--repetition-penalty", type=float, default=1.3, help="the model's generation_config.json (1.0: off)"
    )
    parser.add_argument("--no-repeat-ngram-size", type=int, default=3, help="the model's generation_config.json")
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="no training: score the build already in --output again, with this command's decoding settings "
        "(its weights and training curves are kept)",
    )
    args = parser.parse_args(argv)

    from tfdialogpt._quiet import import_tensorflow

    import_tensorflow()  # without TensorFlow's native start-up lines
    import keras

    from tfdialogpt import DialoGPT, DialoGPTConfig
    from tfdialogpt.chat import changed_settings
    from tfdialogpt.generation_config import GenerationConfig
    from tfdialogpt.tokenizer import Tokenizer
    from tfdialogpt.training import evaluate
    from tfdialogpt.training.bpe import train_byte_level_bpe

    started = time.time()
    keras.utils.set_random_seed(args.seed)

    dialogues, issues = load_corpus(args.corpus)
    reasons = Counter(re.sub(r"\d+", "N", issue.message.rpartition(": ")[2]) for issue in issues)
    for reason, count in reasons.most_common():
        print(f"skipped {count} x {reason}")
    train, valid = split_corpus(dialogues, args.valid_share, args.window, args.seed)
    if args.max_train and args.max_train < len(train):
        chosen = sorted(random.Random(args.seed).sample(range(len(train)), args.max_train))
        train = [train[i] for i in chosen]
    ccc_valid = held_out_ccc(args.corpus, valid, args.valid_share, args.window, args.seed)
    # Replies are scored where the newest context turn and the reference fit any of the models.
    short = [d for d in ccc_valid if max(len(t.split()) for t in d.turns[-2:]) <= REPLY_MAX_WORDS]
    replies_sample = random.Random(args.seed).sample(short, min(args.reply_sample, len(short)))
    print(
        f"corpus {args.corpus}: {len(dialogues)} conversations ({len(issues)} skipped) -> "
        f"{len(train)} train / {len(valid)} valid windows; {len(ccc_valid)} held-out CCC windows scored"
    )
    baseline = None
    if str(args.compare) != "none" and (args.compare / "config.json").is_file():
        old = DialoGPT.from_pretrained(args.compare)
        baseline = score(old, Tokenizer.from_pretrained(args.compare), ccc_valid, replies_sample, args.max_seq_len)
        baseline["model"] = str(args.compare.relative_to(REPO) if args.compare.is_relative_to(REPO) else args.compare)
        baseline["parameters"] = old.config.num_parameters
        print("baseline:", json.dumps(baseline["metrics"] | {"samples": None}))

    if args.rescore:
        before = json.loads((args.output / "build_report.json").read_text())
        trained = {k: before[k] for k in ("history", "train_seconds", "history_note") if k in before}
        config = DialoGPTConfig.from_json_file(args.output / "config.json")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer = train_byte_level_bpe([t for d in train for t in d.turns], args.vocab_size, Path(tmp) / "tok")
            config = DialoGPTConfig(
                vocab_size=tokenizer.vocab_size,
                max_positions=args.max_seq_len,
                hidden_size=args.hidden_size,
                num_layers=args.layers,
                num_heads=args.heads,
                embedding_dropout=args.dropout,
                attention_dropout=args.dropout,
                residual_dropout=args.dropout,
                bos_token_id=tokenizer.eos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            print(f"model: {config.num_parameters:,} parameters, vocab {config.vocab_size}")
            args.output.mkdir(parents=True, exist_ok=True)
            for old_file in args.output.iterdir():
                if old_file.is_file():
                    old_file.unlink()
            model = DialoGPT(config)
            trained = train_and_write(
                model, tokenizer, train, valid, Path(tmp) / "forward", args.output, args, args.epochs
            )
    decoding = GenerationConfig(
        repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size
    )
    decoding.validate().save_pretrained(args.output)
    model = DialoGPT.from_pretrained(args.output)  # scored as it is stored
    tokenizer = Tokenizer.from_pretrained(args.output)
    new = score(model, tokenizer, ccc_valid, replies_sample, args.max_seq_len)
    check = ccc_valid[:CHECK_WINDOWS]
    report = {
        "source": " + ".join(CORPORA[c] for c in CORPORA if args.corpus in (c, "both")),
        "command": "python scripts/build_default_model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "output"},
        "data": {
            "conversations_read": len(dialogues),
            "conversations_skipped": dict(reasons.most_common()),
            "split": f"whole conversations, deduplicated, by a sha256 rank seeded with {args.seed}: "
            f"{args.valid_share:.0%} held out; then windows of at most {args.window} turns",
            "train_windows": len(train),
            "valid_windows": len(valid),
            "scored_ccc_valid_windows": len(ccc_valid),
            "reply_sample": f"{len(replies_sample)} seeded windows, last two turns <= {REPLY_MAX_WORDS} words",
        },
        "parameters": config.num_parameters,
        "weights_dtype": args.weights_dtype,
        "generation_config": changed_settings(decoding),
        **trained,
        "valid": new["metrics"],
        "check": {
            "windows": f"the first {len(check)} of the scored held-out CCC windows",
            "perplexity": evaluate(model, check, tokenizer=tokenizer, max_seq_len=args.max_seq_len, generate=False)[
                "perplexity"
            ],
        },
        "greedy_replies": new["greedy_replies"],
        "most_repeated_reply": most_repeated(new["greedy_replies"]),
    }
    if baseline is not None:
        report["baseline"] = baseline
        report["greedy_replies_side_by_side"] = [
            {"opener": o, "new": new["greedy_replies"][o], "baseline": baseline["greedy_replies"][o]} for o in OPENERS
        ]
    write_report(report, started, args.output)  # the forward model's, before the reverse is built
    if not args.no_reverse:
        report["mmi"] = build_reverse(model, tokenizer, config, train, valid, ccc_valid, replies_sample, args)
        report["mmi"]["replies_side_by_side"] = [
            {"opener": o, "greedy": new["greedy_replies"][o], "mmi": report["mmi"]["replies"][o]} for o in OPENERS
        ]
        report["mmi"]["openers_changed"] = sum(new["greedy_replies"][o] != report["mmi"]["replies"][o] for o in OPENERS)
    size = write_report(report, started, args.output)
    shown = ("parameters", "bytes", "valid", "greedy_replies", "train_seconds", "build_seconds")
    print(json.dumps({k: report[k] for k in shown} | {"mmi": report.get("mmi", {}).get("metrics")}, indent=2))
    if size > MAX_BYTES:
        print(f"error: {size} bytes is over the {MAX_BYTES}-byte budget", file=sys.stderr)
        return 1
    return 0


def write_report(report: dict, started: float, output: Path) -> int:
    """Writes `build_report.json` with the package's bytes and the time so far; returns the bytes."""
    report["bytes"] = package_bytes(output)
    report["build_seconds"] = round(time.time() - started)
    (output / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report["bytes"]


def positive(kind):
    """An argparse type: a finite number of `kind` above 0 (a bad one exits 2 with one line)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number above 0")
        return value

    return parse


def package_bytes(output: Path) -> int:
    """The bytes the package embeds: the model's files and its reverse model's."""
    return sum(f.stat().st_size for f in [*output.iterdir(), *(output / "reverse").glob("*")] if f.is_file())


def train_and_write(model, tokenizer, train, valid, work: Path, output: Path, args, epochs: float) -> dict:
    """Trains `model` with `finetune` for `epochs` in `work`, writes it and its tokenizer to `output`.

    A fractional `epochs` ends (with its learning-rate schedule) after that share of the
    updates: `ceil(epochs * windows / batch size)`."""
    from tfdialogpt.training import finetune

    whole = math.ceil(epochs)
    max_steps = None if whole == epochs else math.ceil(epochs * len(train) / args.batch_size)
    trained_at = time.time()
    result = finetune(
        model,
        train,
        valid,
        output_dir=work,
        tokenizer=tokenizer,
        seed=args.seed,
        epochs=whole,
        max_steps=max_steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        decay="cosine",
        weight_decay=0.1,
        early_stopping_patience=args.patience,
        max_seq_len=args.max_seq_len,
        verbose=2,
        strategy="default",
        jit_compile=True,  # reproducible on CPU (see the module docstring)
    )
    train_seconds = time.time() - trained_at
    output.mkdir(parents=True, exist_ok=True)
    result.model.save_pretrained(output, weights_dtype=args.weights_dtype)
    for name in TOKENIZER_FILES:
        shutil.copy(work / name, output / name)
    return {"history": result.history, "train_seconds": round(train_seconds)}


def build_reverse(model, tokenizer, config, train, valid, ccc_valid, replies_sample, args) -> dict:
    """Trains and writes the reverse model to `<output>/reverse/` (with its own report), and
    returns the forward model's MMI metrics and opener replies against it."""
    from tfdialogpt import DialoGPT
    from tfdialogpt.generation_config import GenerationConfig
    from tfdialogpt.training import evaluate

    out = args.output / "reverse"
    if args.rescore:
        before = json.loads((out / "build_report.json").read_text())
        trained = {k: before[k] for k in ("history", "train_seconds")}
    else:
        if out.exists():
            shutil.rmtree(out)
        with tempfile.TemporaryDirectory() as tmp:
            if args.reverse_from == "forward":
                start = DialoGPT.from_pretrained(args.output)
                start.generation_config = GenerationConfig()  # the forward model's decoding is not the reverse's
            else:
                start = DialoGPT(config)
            trained = train_and_write(
                start,
                tokenizer,
                reversed_windows(train),
                reversed_windows(valid),
                Path(tmp),
                out,
                args,
                args.reverse_epochs,
            )
    reverse = DialoGPT.from_pretrained(out)
    held_out = evaluate(reverse, reversed_windows(ccc_valid), tokenizer=tokenizer, max_seq_len=args.max_seq_len,
                        generate=False)  # fmt: skip
    check = evaluate(reverse, reversed_windows(ccc_valid[:CHECK_WINDOWS]), tokenizer=tokenizer,
                     max_seq_len=args.max_seq_len, generate=False)  # fmt: skip
    report = {
        "what": "the reverse (backward) model for MMI: log P(source turns, newest first | reply), trained on the "
        "forward build's training windows reversed; the reply's turn is not a target",
        "initial_weights": "the forward model's" if args.reverse_from == "forward" else "random",
        "parameters": config.num_parameters,
        "weights_dtype": args.weights_dtype,
        **trained,
        "valid_reversed_ccc": {k: held_out[k] for k in ("loss", "perplexity", "tokens")},
        "check": {
            "windows": f"the first {CHECK_WINDOWS} of the forward build's scored held-out CCC windows, reversed",
            "perplexity": check["perplexity"],
        },
    }
    (out / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
    metrics, replies = reply_scores(model, tokenizer, replies_sample, args.max_seq_len, mmi=reverse)
    return {
        "how": "evaluate(..., mmi_model=reverse/): 8 top-k (10) candidates sampled with seed 0 (and the model's "
        "generation_config), the one with the best reverse score chosen",
        "metrics": metrics,
        "replies": replies,
        "most_repeated_reply": most_repeated(replies),
        "reverse_valid_perplexity": held_out["perplexity"],
    }


if __name__ == "__main__":
    sys.exit(main())
