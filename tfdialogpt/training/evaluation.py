"""`evaluate`: the library call behind `tfdialogpt evaluate`: token-weighted perplexity over a
dialogue file, and the paper's reply metrics on greedy replies to its contexts (or on replies
chosen by MMI reranking against a reverse model).

(Named `evaluation`, not `evaluate`, so that `tfdialogpt.training.evaluate` stays the function
whatever was imported first.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from tfdialogpt.training.examples import encode
from tfdialogpt.training.fit import load_model_and_tokenizer, resolve_max_seq_len
from tfdialogpt.training.losses import token_cross_entropy
from tfdialogpt.training.pipeline import DialogueBatches
from tfdialogpt.training.readers import DataError, load_dialogues


def perplexity(model, batches: DialogueBatches) -> dict[str, float]:
    """Token-weighted loss and perplexity of `model` over one pass of `batches`."""

    @tf.function(autograph=False)
    def sums(inputs, labels, weights):
        ce = token_cross_entropy(labels, model(inputs, training=False))
        return tf.reduce_sum(ce * weights), tf.reduce_sum(weights)

    total, count = 0.0, 0.0
    for inputs, labels, weights in batches.eval_dataset():
        batch_total, batch_count = sums(inputs, labels, weights)
        total, count = total + float(batch_total), count + float(batch_count)
    loss = total / count if count else float("nan")
    return {"loss": loss, "perplexity": math.exp(loss) if count else float("nan"), "tokens": int(count)}


def generate_replies(
    model,
    tokenizer,
    contexts: Sequence[Sequence[str]],
    max_new_tokens: int = 32,
    max_seq_len: int | None = None,
    batch_size: int = 16,
    mmi=None,
) -> list[str]:
    """Greedy replies to each context (turns, oldest first), decoded without the EOS; with
    `mmi` (a `tfdialogpt.chat.MMI`), the candidate it picks among sampled ones.

    Contexts keep their newest turns within `max_seq_len - max_new_tokens` tokens.
    """
    eos = tokenizer.eos_token_id
    replies = []
    budget = max(1, resolve_max_seq_len(max_seq_len, model) - max_new_tokens)
    if mmi is not None:
        return _mmi_replies(model, tokenizer, contexts, max_new_tokens, budget, mmi)
    for start in range(0, len(contexts), batch_size):
        chunk = contexts[start : start + batch_size]
        histories = [tokenizer.encode_dialogue(list(turns), max_length=budget) for turns in chunk]
        input_ids, attention_mask = tokenizer.pad(histories, side="left")
        out = model.generate(
            input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos
        )
        for row in out.token_lists(eos):
            replies.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return replies


def _mmi_replies(model, tokenizer, contexts, max_new_tokens: int, budget: int, mmi) -> list[str]:
    """MMI replies through `Chat`, the chats of a chunk batched into one generate call."""
    from tfdialogpt.chat import Chat, reply_batch

    replies = []
    per_call = max(1, 64 // mmi.num_candidates)  # rows of one generate call: chats x candidates
    for start in range(0, len(contexts), per_call):
        chunk = contexts[start : start + per_call]
        chats = [
            Chat(
                model,
                tokenizer,
                mmi=mmi,
                history=list(turns[:-1]),
                max_context_tokens=budget,
                max_new_tokens=max_new_tokens,
            )
            for turns in chunk
        ]
        replies += reply_batch(chats, [turns[-1] for turns in chunk])
    return replies


def evaluate(
    model="default",
    data=None,
    *,
    tokenizer=None,
    max_seq_len: int | None = None,
    batch_size: int = 8,
    generate: bool = True,
    max_new_tokens: int = 32,
    max_dialogues: int | None = None,
    strict: bool = False,
    mmi_model=None,
    mmi_candidates: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Perplexity on `data`, and the paper's reply metrics on greedy replies to its contexts.

    Each dialogue's last turn is the reference reply to the turns before it.

    Args:
        model: name, directory, hub id or `DialoGPT` (then pass `tokenizer`).
        data: a .tsv / .jsonl / .yml file or directory, or `Dialogue`s / turn lists.
        generate: also generate replies and score them (BLEU-2/4, NIST-2/4, Dist-1/2,
            Entropy-4, average length).
        max_seq_len: longest input (older turns dropped); None = min(128, the model's positions).
        max_dialogues: score replies for the first N dialogues only (perplexity uses all).
        mmi_model: a reverse model (name, directory or `DialoGPT`): replies are then chosen
            by MMI among `mmi_candidates` top-k samples seeded with `seed` (the paper's
            reranking) instead of greedy.
    Returns:
        `{"loss", "perplexity", "tokens", "malformed_lines", [reply metrics], "samples"}`.
    """
    from tfdialogpt.training.metrics import reply_metrics

    if data is None:
        raise ValueError("evaluate needs `data`")
    dialogues, issues = load_dialogues(data, strict, "data")
    model, tokenizer = load_model_and_tokenizer(model, tokenizer)
    max_seq_len = resolve_max_seq_len(max_seq_len, model)
    encoded = encode(dialogues, tokenizer, max_seq_len, "data")
    if not encoded.examples:
        raise DataError("no dialogue in the data gives an example to score")
    batches = DialogueBatches(encoded.examples, batch_size, tokenizer.eos_token_id)
    results: dict[str, Any] = perplexity(model, batches)
    results["malformed_lines"] = len(issues)
    if generate:
        scored = dialogues[:max_dialogues] if max_dialogues else dialogues
        contexts = [d.turns[:-1] for d in scored]
        references = [d.turns[-1] for d in scored]
        mmi = None
        if mmi_model is not None:
            from tfdialogpt import DialoGPT
            from tfdialogpt.chat import MMI

            reverse = mmi_model if isinstance(mmi_model, DialoGPT) else DialoGPT.from_pretrained(mmi_model)
            mmi = MMI(reverse, num_candidates=mmi_candidates, seed=seed)
        replies = generate_replies(model, tokenizer, contexts, max_new_tokens, max_seq_len, mmi=mmi)
        results.update(reply_metrics(replies, references))
        results["samples"] = [
            {"context": list(c), "reference": r, "reply": h}
            for c, r, h in list(zip(contexts, references, replies, strict=True))[:5]
        ]
    return results
