"""Accuracy of `quantize("int8")` against float32, on the same weights.

1. The embedded default model (trained, so its predictions are peaked like a real chat
   model's) on the held-out chatterbot-corpus dialogues it was validated on (the split of
   `scripts/build_default_model.py`): perplexity, the paper's reply metrics, how often the
   int8 model's next-token argmax equals float32's (teacher-forced, every scored token), and
   how many greedy replies come out identical.
2. The DialoGPT-small shape with transformers' random init: relative logit error, KL
   divergence and argmax agreement on random prompts. Random weights give nearly flat
   distributions, so argmax agreement there is a harsh test (near-ties flip easily).

The published DialoGPT weights cannot be downloaded here; real GPT-2 activations have outlier
channels, which per-row activation scales handle worse than these weights do, so re-measure
on the real checkpoint before relying on int8 (`--model microsoft/DialoGPT-medium`).

    python benchmarks/quantization.py                 # both parts, about 3 minutes on 2 cores
    python benchmarks/quantization.py --model DIR     # part 1 for another checkpoint + tokenizer
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))


def validation_dialogues():
    """The default model's held-out dialogues, split exactly as its build script did."""
    from build_default_model import corpus_dir, split_corpus

    from tfdialogpt.training import read_dialogues

    report = json.loads((REPO / "tfdialogpt" / "assets" / "default" / "build_report.json").read_text())
    settings = report["arguments"]
    corpus = read_dialogues(corpus_dir())
    _, valid = split_corpus(corpus.dialogues, settings["valid_share"], settings["window"], settings["seed"])
    return valid


def argmax_agreement(float_model, int8_model, tokenizer, dialogues, max_seq_len: int) -> tuple[float, int]:
    """Share of scored positions (loss weight > 0) where both models' argmax agree."""
    from tfdialogpt.training.examples import encode
    from tfdialogpt.training.pipeline import DialogueBatches

    encoded = encode(dialogues, tokenizer, max_seq_len, "data")
    batches = DialogueBatches(encoded.examples, 16, tokenizer.eos_token_id)
    same = total = 0
    for inputs, _, weights in batches.eval_dataset():
        a = float_model(inputs).numpy().argmax(-1)
        b = int8_model(inputs).numpy().argmax(-1)
        scored = weights.numpy() > 0
        same += int((a == b)[scored].sum())
        total += int(scored.sum())
    return same / total, total


def trained_model_part(model_name: str, max_seq_len: int = 128) -> dict:
    from tfdialogpt import DialoGPT, Tokenizer
    from tfdialogpt.training import evaluate
    from tfdialogpt.training.evaluation import generate_replies

    valid = validation_dialogues()
    tokenizer = Tokenizer.from_pretrained(model_name)
    models = {
        "float32": DialoGPT.from_pretrained(model_name),
        "int8": DialoGPT.from_pretrained(model_name, quantize="int8"),
    }
    scores, replies = {}, {}
    contexts = [d.turns[:-1] for d in valid]
    for name, model in models.items():
        scores[name] = evaluate(model, valid, tokenizer=tokenizer, max_seq_len=max_seq_len, max_new_tokens=24)
        replies[name] = generate_replies(model, tokenizer, contexts, max_new_tokens=24, max_seq_len=max_seq_len)
    agreement, positions = argmax_agreement(models["float32"], models["int8"], tokenizer, valid, max_seq_len)
    same_replies = sum(a == b for a, b in zip(replies["float32"], replies["int8"], strict=True))
    keys = ("perplexity", "bleu2", "bleu4", "nist2", "nist4", "dist1", "dist2", "entropy4", "avg_length")
    return {
        "model": model_name,
        "dialogues": len(valid),
        "metrics": {name: {k: scores[name][k] for k in keys if k in scores[name]} for name in models},
        "argmax_agreement": agreement,
        "scored_positions": positions,
        "identical_greedy_replies": f"{same_replies}/{len(contexts)}",
        "examples": [
            {"context": c[-1], "float32": a, "int8": b}
            for c, a, b in zip(contexts, replies["float32"], replies["int8"], strict=True)
            if a != b
        ][:5],
    }


def random_small_part(batch: int = 4, length: int = 64, new_tokens: int = 32) -> dict:
    import tempfile

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from tfdialogpt import DialoGPT, DialoGPTConfig

    config = DialoGPTConfig.preset("small")
    with tempfile.TemporaryDirectory() as directory:
        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config(**config.to_hf_dict())).save_pretrained(directory)
        float_model = DialoGPT.from_pretrained(directory)
        int8_model = DialoGPT.from_pretrained(directory, quantize="int8")
    ids = np.random.default_rng(0).integers(0, 50000, (batch, length)).astype(np.int32)
    a = float_model(ids).numpy().astype(np.float64)
    b = int8_model(ids).numpy().astype(np.float64)
    pa = np.exp(a - a.max(-1, keepdims=True))
    pa /= pa.sum(-1, keepdims=True)
    log_pa = np.log(pa)
    log_pb = b - b.max(-1, keepdims=True)
    log_pb -= np.log(np.exp(log_pb).sum(-1, keepdims=True))
    kl = (pa * (log_pa - log_pb)).sum(-1)
    greedy = [
        m.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens).sequences.numpy()
        for m in (float_model, int8_model)
    ]
    first_diff = [int(np.argmax(r != s)) if (r != s).any() else new_tokens for r, s in zip(*greedy, strict=True)]
    return {
        "shape": "DialoGPT-small, transformers random init (seed 0)",
        "positions": batch * length,
        "relative_logit_error": float(np.linalg.norm(b - a) / np.linalg.norm(a)),
        "mean_kl_nats": float(kl.mean()),
        "max_kl_nats": float(kl.max()),
        "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).mean()),
        "greedy_tokens_before_first_difference": first_diff,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="trained checkpoint for part 1 (default: embedded)")
    parser.add_argument("--skip-random", action="store_true", help="part 1 only")
    args = parser.parse_args(argv)
    results = {"trained": trained_model_part(args.model)}
    if not args.skip_random:
        results["random_small"] = random_small_part()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    from tfdialogpt._quiet import import_tensorflow

    import_tensorflow()  # first, so no later import prints TensorFlow's native start-up lines
    sys.exit(main())
