"""DialoGPT's reply metrics (DSTC-7): BLEU-2/4, NIST-2/4, Dist-1/2, Entropy-4, average length.

BLEU is sacrebleu's corpus BLEU with its n-gram order set to 2 or 4 (reported 0-100, as in the
paper); NIST is nltk's `corpus_nist`. Dist-n, Entropy-n and the length follow DialoGPT's
`dstc/metrics.py`. Text is lowercased and tokenized with sacrebleu's `13a` tokenizer first, so
every metric sees the same words.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def _words(texts: Sequence[str], lowercase: bool) -> list[list[str]]:
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    tokenize = Tokenizer13a()
    return [tokenize(t.lower() if lowercase else t).split() for t in texts]


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct(hypotheses: Sequence[Sequence[str]], n: int) -> float:
    """Dist-n: distinct n-grams / all n-grams over every reply (0 when there are none)."""
    grams = [g for words in hypotheses for g in _ngrams(words, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def entropy(hypotheses: Sequence[Sequence[str]], n: int) -> float:
    """Entropy-n (nats) of the n-gram distribution over every reply."""
    counts = Counter(g for words in hypotheses for g in _ngrams(words, n))
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values()) if total else 0.0


def reply_metrics(hypotheses: Sequence[str], references: Sequence[str], lowercase: bool = True) -> dict[str, float]:
    """Scores generated replies against one reference reply each.

    Returns:
        `bleu2`, `bleu4` (0-100), `nist2`, `nist4`, `dist1`, `dist2`, `entropy4`,
        `avg_length` (words per reply), `num_replies`.

    Example:
        >>> reply_metrics(["i am fine ."], ["i am fine ."])["bleu2"]
        100.0
    """
    from nltk.translate.nist_score import corpus_nist
    from sacrebleu.metrics import BLEU

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} replies but {len(references)} references")
    if not hypotheses:
        raise ValueError("no replies to score")
    hyp_words, ref_words = _words(hypotheses, lowercase), _words(references, lowercase)
    hyp_text, ref_text = [" ".join(w) for w in hyp_words], [" ".join(w) for w in ref_words]
    scores = {}
    for order in (2, 4):
        # force: the text is tokenized here on purpose (13a above), so sacrebleu's "forgot to
        # detokenize" warning (it only warns; the score is the same) does not apply.
        bleu = BLEU(max_ngram_order=order, tokenize="none", effective_order=False, force=True)
        scores[f"bleu{order}"] = float(bleu.corpus_score(hyp_text, [ref_text]).score)
    longest = max(len(words) for words in hyp_words)
    for order in (2, 4):
        # NIST sums information over n-gram orders 1..n; an order no reply is long enough to
        # have adds nothing (nltk would divide by zero), so score up to the longest reply.
        usable = min(order, longest)
        scores[f"nist{order}"] = float(corpus_nist([[r] for r in ref_words], hyp_words, n=usable)) if usable else 0.0
    scores["dist1"] = distinct(hyp_words, 1)
    scores["dist2"] = distinct(hyp_words, 2)
    scores["entropy4"] = entropy(hyp_words, 4)
    scores["avg_length"] = sum(len(w) for w in hyp_words) / len(hyp_words)
    scores["num_replies"] = len(hyp_words)
    return scores
