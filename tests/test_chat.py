"""Chat sessions: history truncation, batching, and MMI reranking with a real reverse model."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfdialogpt import DialoGPT, DialoGPTConfig
from tfdialogpt.chat import MMI, Chat, reply_batch
from tfdialogpt.scoring import score

CORPUS = [
    "Hello",
    "Hi there",
    "How are you?",
    "I am fine, thank you.",
    "What is your name?",
    "My name is Bot.",
    "Do you like music?",
    "Yes, I love jazz.",
    "Good night",
    "See you tomorrow",
] * 5


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from tfdialogpt.training.bpe import train_byte_level_bpe

    return train_byte_level_bpe(CORPUS, 300, tmp_path_factory.mktemp("bpe"))


class FakeBackend:
    """Returns canned replies and records what it was asked: the chat logic, not the model."""

    def __init__(self, replies, max_positions=64):
        self.replies, self.max_positions, self.calls = replies, max_positions, []

    def generate_ids(self, histories, **sampling):
        self.calls.append((list(map(list, histories)), sampling))
        return [list(self.replies[i % len(self.replies)]) for i in range(len(histories))]

    def score_ids(self, contexts, replies):
        raise AssertionError("not used")


def test_history_and_reset(tokenizer):
    backend = FakeBackend([tokenizer.encode("Hi there")])
    chat = Chat(backend, tokenizer, max_new_tokens=8, top_k=5)
    assert chat.reply("Hello") == "Hi there"
    assert chat.history == ["Hello", "Hi there"]
    histories, sampling = backend.calls[0]
    assert histories == [tokenizer.encode("Hello") + [tokenizer.eos_token_id]]
    assert sampling == {"top_k": 5, "max_new_tokens": 8}
    chat.reply("How are you?")
    assert backend.calls[1][0][0] == tokenizer.encode_dialogue(["Hello", "Hi there", "How are you?"])
    chat.reset()
    assert chat.history == []


def test_truncation_keeps_newest_whole_turns(tokenizer):
    backend = FakeBackend([tokenizer.encode("I am fine, thank you.")], max_positions=40)
    chat = Chat(backend, tokenizer, max_new_tokens=10)  # 30 tokens of history at most
    for text in ["Hello", "What is your name?", "Do you like music?", "Good night"]:
        chat.reply(text)
    context = backend.calls[-1][0][0]
    assert len(context) <= 30
    turns = tokenizer.decode(context).split("<|endoftext|>")[:-1]
    # Whole turns, newest last, a suffix of the history.
    assert turns == chat.history[-1 - len(turns) : -1]
    assert turns[-1] == "Good night" and len(turns) < len(chat.history) - 1


def test_too_long_user_turn_is_a_clear_error(tokenizer):
    chat = Chat(FakeBackend([[1]], max_positions=20), tokenizer, max_new_tokens=10)
    with pytest.raises(ValueError, match="the newest turn is .* longer than max_length"):
        chat.reply("I am fine, thank you. " * 10)
    with pytest.raises(ValueError, match="non-empty"):
        chat.reply("   ")
    assert chat.history == []


def test_batch_replies_use_one_generate_call(tokenizer):
    backend = FakeBackend([tokenizer.encode("Hi there"), tokenizer.encode("Yes, I love jazz.")])
    chats = [Chat(backend, tokenizer), Chat(backend, tokenizer)]
    assert reply_batch(chats, ["Hello", "Do you like music?"]) == ["Hi there", "Yes, I love jazz."]
    assert len(backend.calls) == 1 and len(backend.calls[0][0]) == 2


# ---- MMI ---------------------------------------------------------------------------------------


def one_layer_config(tokenizer) -> DialoGPTConfig:
    """One layer, 32 wide, 32 positions, no dropout, on `tokenizer`'s vocabulary."""
    eos = tokenizer.eos_token_id
    return DialoGPTConfig(
        vocab_size=tokenizer.vocab_size,
        max_positions=32,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        embedding_dropout=0,
        attention_dropout=0,
        residual_dropout=0,
        eos_token_id=eos,
        bos_token_id=eos,
    )


def train_reverse_model(tokenizer, pairs, steps=150):
    """A tiny reverse model taught log P(source | reply): reply<eos>source<eos> sequences."""
    import keras

    keras.utils.set_random_seed(0)
    model = DialoGPT(one_layer_config(tokenizer))
    eos = tokenizer.eos_token_id
    rows = [tokenizer.encode(reply) + [eos] + tokenizer.encode(source) + [eos] for reply, source in pairs]
    width = max(map(len, rows))
    ids = np.full((len(rows), width), eos, np.int32)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    optimizer = keras.optimizers.Adam(1e-2)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = model(ids, attention_mask=mask, training=True)[:, :-1]
            loss = tf.keras.losses.sparse_categorical_crossentropy(ids[:, 1:], logits, from_logits=True)
            loss = tf.reduce_sum(loss * mask[:, 1:]) / tf.reduce_sum(tf.cast(mask[:, 1:], tf.float32))
        optimizer.apply_gradients(
            zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables, strict=True)
        )
        return loss

    for _ in range(steps):
        loss = step()
    assert float(loss) < 0.5
    return model


def test_mmi_picks_the_candidate_the_reverse_model_prefers(tokenizer):
    known = "My name is Bot."
    # The reverse model learns: after `known`, the source was "What is your name?"; after the
    # other replies, other sources.
    reverse = train_reverse_model(
        tokenizer,
        [
            (known, "What is your name?"),
            ("Good night", "See you tomorrow"),
            ("Yes, I love jazz.", "Do you like music?"),
        ],
    )
    candidates = [tokenizer.encode(t) for t in ("Good night", known, "Yes, I love jazz.")]
    backend = FakeBackend(candidates)
    mmi = MMI(reverse, num_candidates=3)
    chat = Chat(backend, tokenizer, max_new_tokens=8, mmi=mmi)
    assert chat.reply("What is your name?") == known
    histories, sampling = backend.calls[0]
    assert len(histories) == 3 and sampling["do_sample"] is True  # candidates sampled in one batch
    # The pick is the argmax of the reverse scores, computed independently here.
    eos = tokenizer.eos_token_id
    source = tokenizer.encode("What is your name?") + [eos]
    expected = score(reverse, [c + [eos] for c in candidates], [source] * 3, pad_id=eos)
    assert int(np.argmax(expected)) == 1
    np.testing.assert_allclose(mmi.scores(source, candidates, eos), expected, rtol=1e-5)


def test_mmi_sampling_by_softmax_of_scores():
    mmi = MMI(FakeBackend([[1]]), num_candidates=3, temperature=1.0, seed=0)
    picks = [mmi.pick(np.array([0.0, 5.0, -np.inf])) for _ in range(200)]
    assert 2 not in picks and picks.count(1) > 180
    with pytest.raises(ValueError, match="num_candidates must be at least 1"):
        MMI(FakeBackend([[1]]), num_candidates=0)


def test_score_matches_manual_log_softmax(tokenizer):
    model = DialoGPT(
        DialoGPTConfig(vocab_size=tokenizer.vocab_size, max_positions=16, hidden_size=16, num_layers=1, num_heads=2)
    )
    context, reply = [3, 4, 5], [6, 7]
    logits = model(np.array([context + reply], np.int32)).numpy()[0]
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    manual = log_probs[2, 6] + log_probs[3, 7]
    np.testing.assert_allclose(score(model, [context], [reply]), [manual], rtol=1e-5)


def test_evaluate_with_mmi_scores_the_replies_the_reverse_model_picks(tokenizer):
    """`evaluate(..., mmi_model=)`: each scored reply is, among the seeded top-k candidates
    (generated here directly), the one with the best reverse score (computed here directly)."""
    from tfdialogpt.generation_config import GenerationConfig
    from tfdialogpt.training import evaluate

    pairs = [("My name is Bot.", "What is your name?"), ("Yes, I love jazz.", "Do you like music?")]
    reverse = train_reverse_model(tokenizer, pairs, steps=60)
    import keras

    keras.utils.set_random_seed(3)
    forward = DialoGPT(one_layer_config(tokenizer))
    dialogues = [["Hello", "Hi there", "How are you?", "I am fine, thank you."], ["Do you like music?", "Yes"]]
    new, candidates, seed = 6, 3, 12
    results = evaluate(
        forward, dialogues, tokenizer=tokenizer, max_seq_len=32, max_new_tokens=new, mmi_model=reverse,
        mmi_candidates=candidates, seed=seed,
    )  # fmt: skip
    assert {"bleu2", "dist1", "avg_length"} <= set(results)
    eos = tokenizer.eos_token_id
    # Both dialogues' candidates come from one batched call, left padded, one seed for the batch.
    contexts = [tokenizer.encode_dialogue(d[:-1], max_length=32 - new) for d in dialogues]
    ids, mask = tokenizer.pad([c for c in contexts for _ in range(candidates)], side="left")
    out = forward.generate(
        ids, attention_mask=mask, config=GenerationConfig(), max_new_tokens=new, do_sample=True, top_k=10, seed=seed
    )
    rows = out.token_lists(eos)
    picked = []
    for i, (dialogue, sample) in enumerate(zip(dialogues, results["samples"], strict=True)):
        mine = rows[i * candidates : (i + 1) * candidates]
        source = [t for turn in reversed(dialogue[:-1]) for t in tokenizer.encode(turn) + [eos]]
        scores = [score(reverse, [r + [eos]], [source], pad_id=eos)[0] if r else -np.inf for r in mine]
        picked.append(int(np.argmax(scores)))
        expected = tokenizer.decode(mine[picked[-1]], skip_special_tokens=True).strip()
        assert sample["reply"] == expected
    assert picked != [0, 0], "the seed should give a case where the first candidate is not the pick"


def test_mmi_scores_a_history_longer_than_the_reverse_model_on_its_newest_whole_turns(tokenizer):
    """A source that does not fit the reverse model's positions after the longest candidate
    is cut to its newest whole turns, the same for every candidate (it used to reach the
    position embedding and fail there)."""
    eos = tokenizer.eos_token_id
    reverse = DialoGPT(
        DialoGPTConfig(
            vocab_size=tokenizer.vocab_size,
            max_positions=32,
            hidden_size=16,
            num_layers=1,
            num_heads=2,
            eos_token_id=eos,
            bos_token_id=eos,
        )  # fmt: skip
    )
    turns = ["Do you like music?", "Yes, I love jazz.", "What is your name?", "My name is Bot.", "Good night"]
    source = [t for turn in reversed(turns) for t in tokenizer.encode(turn) + [eos]]
    candidates = [tokenizer.encode("See you tomorrow"), tokenizer.encode("Hi")]
    longest = max(len(c) for c in candidates) + 1
    assert len(source) + longest > 32
    # By hand: the newest turns, whole, within 32 - longest positions.
    kept, used = [], 0
    for turn in reversed(turns):
        ids = tokenizer.encode(turn) + [eos]
        if used + len(ids) > 32 - longest:
            break
        kept, used = kept + ids, used + len(ids)
    assert 0 < len(kept) < len(source)
    expected = score(reverse, [c + [eos] for c in candidates], [kept] * 2, pad_id=eos)
    np.testing.assert_allclose(MMI(reverse).scores(source, candidates, eos), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="leaves no room for the source"):
        MMI(reverse).scores(source, [[5] * 31], eos)
