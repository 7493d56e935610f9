"""Conversations: history kept as turns, DialoGPT's input built from the newest turns that fit,
replies generated (locally or by a served model), and MMI reranking as in the paper.

`Chat` tokenizes here and talks ids to its backend (a local model, or a served export's
`generate` signature). `ServedChat` sends the text history to a served export's `chat`
signature, which tokenizes, truncates and detokenizes in the graph: no tokenizer here.

    >>> chat = Chat(DialoGPT.from_pretrained("default"), Tokenizer.from_pretrained("default"))  # doctest: +SKIP
    >>> chat.reply("Hello")  # doctest: +SKIP
    'Hi there!'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from tfdialogpt import padding
from tfdialogpt.generation_config import GenerationConfig


class Backend(Protocol):
    """What a chat needs from a model: ids in, ids out. Local models and served ones both fit."""

    max_positions: int

    def generate_ids(self, histories: Sequence[Sequence[int]], **settings: Any) -> list[list[int]]:
        """Continuations (without the closing EOS) for each history, one batched call, decoded
        with `GenerationConfig`'s defaults plus `settings`."""

    def score_ids(self, contexts: Sequence[Sequence[int]], replies: Sequence[Sequence[int]]) -> np.ndarray:
        """log P(reply | context) for each pair."""


class LocalBackend:
    """A `DialoGPT` in this process."""

    def __init__(self, model, jit_compile: bool = True):
        self.model = model
        self.jit_compile = jit_compile
        self.max_positions = model.config.max_positions
        self.eos_token_id = model.config.eos_token_id

    def generate_ids(self, histories, **settings):
        ids, mask = padding.left_pad(histories, self.eos_token_id)  # every row ends at one column
        # The chat's settings, whole: not on top of the model's own generation_config.
        out = self.model.generate(
            ids, attention_mask=mask, config=GenerationConfig(), jit_compile=self.jit_compile, **settings
        )
        return out.token_lists(self.eos_token_id)

    def score_ids(self, contexts, replies):
        from tfdialogpt.scoring import score

        return score(self.model, contexts, replies, pad_id=self.eos_token_id)


def as_backend(model_or_backend) -> Backend:
    if hasattr(model_or_backend, "generate_ids"):
        return model_or_backend
    return LocalBackend(model_or_backend)


@dataclasses.dataclass
class MMI:
    """Maximum mutual information reranking (DialoGPT paper, section 3.2).

    Samples `num_candidates` replies in one batched call, scores each with a reverse model's
    log P(source | candidate), and picks the best (or samples by softmax(score / temperature)).

    Args:
        reverse: the reverse (backward) model, trained on dialogues with the turn order
            reversed: a `DialoGPT` or a backend (e.g. a served export's `score` signature).
        num_candidates: how many candidates to sample.
        temperature: None picks the argmax; a float samples from softmax(score / temperature).
        top_k: top-k for sampling the candidates (the paper used top-K sampling).
    """

    reverse: Any
    num_candidates: int = 8
    temperature: float | None = None
    top_k: int = 10
    seed: int | None = None

    def __post_init__(self):
        if self.num_candidates < 1:
            raise ValueError(f"num_candidates must be at least 1, got {self.num_candidates}")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        self.reverse = as_backend(self.reverse)
        self._rng = np.random.default_rng(self.seed)

    def scores(self, source: list[int], candidates: Sequence[list[int]], eos: int) -> np.ndarray:
        """log P(source | candidate) by the reverse model; empty candidates score -inf.

        `source` is the dialogue backwards (turns newest first, each closed by EOS). Where it
        does not fit the reverse model's positions after the longest candidate, every candidate
        is scored on the same newest whole turns that fit (or the newest turn's first tokens).
        """
        scores = np.full(len(candidates), -np.inf, np.float32)
        rows = [i for i, c in enumerate(candidates) if c]
        if rows:
            contexts = [list(candidates[i]) + [eos] for i in rows]
            budget = self.reverse.max_positions - max(map(len, contexts))
            if budget < 1:
                raise ValueError(
                    f"a candidate of {max(map(len, contexts)) - 1} tokens leaves no room for the source in the "
                    f"reverse model's {self.reverse.max_positions} positions"
                )
            scores[rows] = self.reverse.score_ids(contexts, [newest_turns(source, budget, eos)] * len(rows))
        return scores

    def pick(self, scores: np.ndarray) -> int:
        if self.temperature is None or not np.isfinite(scores).any():
            return int(np.argmax(scores))
        z = (scores - scores[np.isfinite(scores)].max()) / self.temperature
        p = np.where(np.isfinite(z), np.exp(z), 0.0)
        return int(self._rng.choice(len(scores), p=p / p.sum()))


def newest_turns(source: Sequence[int], budget: int, eos: int) -> list[int]:
    """The longest run of `source`'s first whole turns (each closed by `eos`) within `budget`
    tokens; if even the first turn is longer, its first `budget` tokens."""
    source = list(source)
    if len(source) <= budget:
        return source
    ends = [i + 1 for i, token in enumerate(source[:budget]) if token == eos]
    return source[: ends[-1]] if ends else source[:budget]


class Chat:
    """A dialogue with a DialoGPT model.

    Args:
        model: a `DialoGPT`, or a backend such as `tfdialogpt.serving.Client` for a served model.
        tokenizer: the model's `Tokenizer`.
        config: the decoding settings (`GenerationConfig`; default: its defaults).
        max_context_tokens: token budget for the history; by default what the model's positions
            leave after the reply. The newest whole turns that fit are kept.
        mmi: an `MMI` reranker, or None for plain decoding.
        history: earlier turns to start from (oldest first, user and bot alternating).
        **settings: `GenerationConfig` settings on top of `config` (`max_new_tokens`,
            `do_sample`, `top_k`, `top_p`, `temperature`, `num_beams`, `seed`, ...).

    Example:
        >>> chat = Chat(model, tokenizer, do_sample=True, top_p=0.9, seed=0)  # doctest: +SKIP
        >>> chat.reply("Does money buy happiness?")  # doctest: +SKIP
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        config: GenerationConfig | None = None,
        max_context_tokens: int | None = None,
        mmi: MMI | None = None,
        history: Sequence[str] = (),
        **settings: Any,
    ):
        self.backend = as_backend(model)
        self.tokenizer = tokenizer
        if config is None:  # the model's own settings (its generation_config.json), if local
            config = getattr(getattr(self.backend, "model", None), "generation_config", None) or GenerationConfig()
        self.config = config.replace(**settings).validate()
        max_new_tokens = self.max_new_tokens
        room = self.backend.max_positions - max_new_tokens
        if room < 1:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} leaves no room for a history "
                f"in {self.backend.max_positions} positions"
            )
        self.max_context_tokens = min(max_context_tokens or room, room)
        self.mmi = mmi
        if any(not isinstance(turn, str) for turn in history):
            raise ValueError("history must be a list of turns (strings), oldest first")
        self._turns: list[str] = list(history)

    @property
    def max_new_tokens(self) -> int:
        return self.config.max_new_tokens

    @property
    def history(self) -> list[str]:
        """The turns so far, oldest first (user and bot alternating)."""
        return list(self._turns)

    def reset(self) -> None:
        self._turns.clear()

    def context_ids(self, text: str | None = None) -> list[int]:
        """The model input for the history (plus `text` as the newest turn): the newest whole
        turns that fit the budget, each closed by `<|endoftext|>`."""
        turns = self._turns + ([text] if text is not None else [])
        return self.tokenizer.encode_dialogue(turns, max_length=self.max_context_tokens)

    def reply(self, text: str) -> str:
        """Adds the user's turn, generates, stores and returns the reply."""
        return reply_batch([self], [text])[0]

    def _choose(self, context: list[int], candidates: list[list[int]]) -> list[int]:
        if self.mmi is None:
            return candidates[0]
        eos = self.tokenizer.eos_token_id
        # The reverse model reads the dialogue backwards: the candidate, then the source turns
        # newest first.
        turns = _split_turns(context, eos)
        source = [t for turn in reversed(turns) for t in turn + [eos]]
        return candidates[self.mmi.pick(self.mmi.scores(source, candidates, eos))]


class ServedChat:
    """A dialogue with a served export's `chat` signature; the history is kept here as text.

    Args:
        client: a `tfdialogpt.serving.Client` (anything with its `reply(history, **settings)`).
        history: earlier turns to start from (oldest first, user and bot alternating).
        **settings: served `GenerationConfig` settings sent with every request; those not
            given take the export's defaults (its model's `generation_config`).

    Example:
        >>> chat = ServedChat(Client("localhost:8500"), do_sample=True, top_p=0.9)  # doctest: +SKIP
        >>> chat.reply("Does money buy happiness?")  # doctest: +SKIP
    """

    def __init__(self, client, *, history: Sequence[str] = (), **settings: Any):
        if any(not isinstance(turn, str) for turn in history):
            raise ValueError("history must be a list of turns (strings), oldest first")
        self.client, self.settings = client, settings
        self._turns: list[str] = list(history)

    @property
    def history(self) -> list[str]:
        return list(self._turns)

    def reset(self) -> None:
        self._turns.clear()

    def reply(self, text: str) -> str:
        """Adds the user's turn, asks the server, stores and returns the reply."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("a user turn must be a non-empty string")
        reply = self.client.reply(self._turns + [text], **self.settings)
        self._turns += [text, reply]
        return reply


def changed_settings(config: GenerationConfig) -> dict[str, Any]:
    """The settings of `config` that differ from `GenerationConfig`'s defaults (what a backend
    is sent: it decodes with the defaults plus these)."""
    default = GenerationConfig()
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if getattr(config, f.name) != getattr(default, f.name)
    }


def _split_turns(ids: list[int], eos: int) -> list[list[int]]:
    turns, current = [], []
    for t in ids:
        if t == eos:
            turns.append(current)
            current = []
        else:
            current.append(t)
    return turns


def _same_backend(a, b) -> bool:
    return a is b or (isinstance(a, LocalBackend) and isinstance(b, LocalBackend) and a.model is b.model)


def reply_batch(chats: Sequence[Chat], texts: Sequence[str]) -> list[str]:
    """Replies for many conversations in one batched generate call (MMI: one call for all
    candidates of all conversations). Chats must share a backend and sampling settings."""
    if len(chats) != len(texts):
        raise ValueError(f"got {len(chats)} chats but {len(texts)} texts")
    if not chats:
        return []
    first = chats[0]
    for chat in chats[1:]:
        if not _same_backend(chat.backend, first.backend) or chat.config != first.config or chat.mmi is not first.mmi:
            raise ValueError("reply_batch needs chats that share one backend, sampling and MMI settings")
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("a user turn must be a non-empty string")
    contexts = [chat.context_ids(text) for chat, text in zip(chats, texts, strict=True)]
    config = first.config
    per_chat = 1
    if first.mmi is not None:
        per_chat = first.mmi.num_candidates
        config = config.replace(do_sample=True, top_k=first.mmi.top_k)
        if config.seed is None and first.mmi.seed is not None:
            config = config.replace(seed=first.mmi.seed)
    histories = [ctx for ctx in contexts for _ in range(per_chat)]
    outputs = first.backend.generate_ids(histories, **changed_settings(config))
    replies = []
    for i, (chat, text, context) in enumerate(zip(chats, texts, contexts, strict=True)):
        chosen = chat._choose(context, outputs[i * per_chat : (i + 1) * per_chat])
        reply = chat.tokenizer.decode(chosen, skip_special_tokens=True).strip()
        chat._turns += [text, reply]
        replies.append(reply)
    return replies
