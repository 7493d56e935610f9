"""Rebuilds the embedded default model, `tfdialogpt/assets/default/`, deterministically.

A small DialoGPT-architecture model trained from scratch, by this package's own pipeline
(`tfdialogpt.training.fit`), on the English chatterbot-corpus (BSD, `pip install
chatterbot-corpus==1.3.3 --no-deps`), with its own byte-level BPE trained by `tokenizers`:

1. read every English `.yml` with `read_dialogues`, drop duplicate conversations, cut long
   ones into windows of at most `--window` turns (one turn of overlap), and hold out every
   conversation whose seeded rank falls in the validation share;
2. train a GPT-2-style byte-level BPE on the training turns, `<|endoftext|>` as the last id;
3. train the model with `finetune` (seeded data order and init, deterministic TF ops);
4. write config.json, tf_model.h5 and the tokenizer files, and `build_report.json` with the
   validation perplexity and greedy replies to the corpus's openers.

Same seed, same machine type: same bytes. Takes about 6 minutes on 2 idle CPU cores.

    python scripts/build_default_model.py              # writes tfdialogpt/assets/default/
    python scripts/build_default_model.py --output /tmp/default --epochs 2   # a quick try
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
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
]
MAX_BYTES = 15 * 1024 * 1024
KEPT_FILES = (
    "config.json",
    "tf_model.h5",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def corpus_dir() -> Path:
    try:
        import chatterbot_corpus
    except ImportError:
        sys.exit("needs the corpus: pip install chatterbot-corpus==1.3.3 --no-deps")
    return Path(chatterbot_corpus.__file__).parent / "data" / "english"


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--dropout", type=float, default=0.1, help="embedding, attention and residual dropout")
    parser.add_argument("--epochs", type=int, default=22)
    parser.add_argument("--patience", type=int, default=None, help="early stopping on validation loss (off)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--valid-share", type=float, default=0.08)
    parser.add_argument("--window", type=int, default=6, help="longest conversation window, in turns")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from tfdialogpt import DialoGPT, DialoGPTConfig
    from tfdialogpt.training import evaluate, finetune, read_dialogues
    from tfdialogpt.training.bpe import train_byte_level_bpe
    from tfdialogpt.training.evaluation import generate_replies

    started = time.time()
    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()

    corpus = read_dialogues(corpus_dir())  # trivia.yml:35 is malformed in 1.3.3: reported, skipped
    for issue in corpus.issues:
        print(f"skipped {Path(issue.path).name}:{issue.line}: {issue.message}")
    train, valid = split_corpus(corpus.dialogues, args.valid_share, args.window, args.seed)
    print(f"corpus: {len(corpus.dialogues)} conversations -> {len(train)} train / {len(valid)} valid dialogues")

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
        model = DialoGPT(config)
        work = Path(tmp) / "run"
        result = finetune(
            model,
            train,
            valid,
            output_dir=work,
            tokenizer=tokenizer,
            seed=args.seed,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            warmup_steps=50,
            decay="cosine",
            weight_decay=0.1,
            early_stopping_patience=args.patience,
            max_seq_len=args.max_seq_len,
            verbose=2,
            strategy="default",
            jit_compile=False,  # Keras turns XLA off under op determinism anyway
        )
        scores = evaluate(result.model, valid, tokenizer=tokenizer, max_seq_len=args.max_seq_len, max_new_tokens=24)
        replies = generate_replies(
            result.model, tokenizer, [[o] for o in OPENERS], max_new_tokens=24, max_seq_len=args.max_seq_len
        )

        args.output.mkdir(parents=True, exist_ok=True)
        for old in args.output.iterdir():
            if old.is_file():
                old.unlink()
        for name in KEPT_FILES:
            shutil.copy(work / name, args.output / name)
    size = sum((args.output / name).stat().st_size for name in KEPT_FILES)
    report = {
        "source": "chatterbot-corpus 1.3.3, English (BSD)",
        "command": "python scripts/build_default_model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "output"},
        "train_dialogues": len(train),
        "valid_dialogues": len(valid),
        "parameters": config.num_parameters,
        "bytes": size,
        "history": result.history,
        "valid": {k: v for k, v in scores.items() if k != "samples"},
        "greedy_replies": dict(zip(OPENERS, replies, strict=True)),
        "build_seconds": round(time.time() - started),
    }
    (args.output / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps(
            {k: report[k] for k in ("parameters", "bytes", "valid", "greedy_replies", "build_seconds")}, indent=2
        )
    )
    if size > MAX_BYTES:
        print(f"error: {size} bytes is over the {MAX_BYTES}-byte budget", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
