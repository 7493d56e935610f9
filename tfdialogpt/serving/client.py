"""A client for a served DialoGPT export over TF Serving's gRPC API: text through the export's
`chat` signature (no tokenizer here), ids through `generate` and `score`.

Works the same against the real `tensorflow_model_server` and against
`tfdialogpt.serving.server`. It needs no weights and does not start TensorFlow: requests are
built from the shared contract (`signatures.py`) with numpy and the `tensorflow-serving-api`
protos (`protos.py`).

Example:
    >>> from tfdialogpt.serving import Client
    >>> with Client("localhost:8500", "dialogpt") as client:  # doctest: +SKIP
    ...     client.reply(["Does money buy happiness?"])
    'Not really.'
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np

from tfdialogpt import padding
from tfdialogpt.generation_config import SEED_LIMIT, SETTINGS, GenerationConfig
from tfdialogpt.serving import signatures as contract
from tfdialogpt.serving.errors import ERROR_CLASSES as _ERROR_CLASSES
from tfdialogpt.serving.errors import (  # noqa: F401 (re-exported: the client raises these)
    InvalidRequestError,
    ModelNotFoundError,
    ResourceExhaustedError,
    ServerUnavailableError,
    ServingError,
    ServingTimeoutError,
)
from tfdialogpt.serving.protos import apis, to_ndarray, to_tensor_proto

DEFAULT_TIMEOUT = 30.0  # seconds, for every call unless the call says otherwise
GPT2_EOS_ID = 50256


# ---- results ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which model, version and signature answered (the response's echoed `model_spec`)."""

    name: str
    version: int
    signature: str


@dataclasses.dataclass(frozen=True)
class Generation:
    """A generate answer.

    Attributes:
        sequences: int32 [B, N], the generated ids only; after a row's EOS, padding.
        lengths: int32 [B], generated tokens per row, its EOS included.
        model_spec: what answered.
    """

    sequences: np.ndarray
    lengths: np.ndarray
    model_spec: ModelSpec

    def token_lists(self, eos_token_id: int | None = None) -> list[list[int]]:
        """Each row's generated ids, cut at its length (and before its EOS if given)."""
        rows = [seq[:n].tolist() for seq, n in zip(self.sequences, self.lengths, strict=True)]
        if eos_token_id is not None:
            rows = [row[: row.index(eos_token_id)] if eos_token_id in row else row for row in rows]
        return rows


@dataclasses.dataclass(frozen=True)
class Scores:
    """A score answer: `log_probs` float32 [B] (summed over `num_tokens` int32 [B])."""

    log_probs: np.ndarray
    num_tokens: np.ndarray
    model_spec: ModelSpec


# ---- the client ------------------------------------------------------------------------------


def _served_config(config: GenerationConfig | None) -> GenerationConfig:
    """`config` checked, refused if it needs a setting the signatures do not serve, with a seed."""
    try:  # refused here, as the server would refuse it
        config = (config or GenerationConfig()).validate()
    except ValueError as err:
        raise InvalidRequestError(str(err), code=grpc.StatusCode.INVALID_ARGUMENT) from None
    for name, setting in SETTINGS.items():
        if name not in contract.PARAMETERS and getattr(config, name) != setting.default:
            raise ValueError(
                f"{name}={getattr(config, name)} is not served: the exported signatures decode "
                f"greedily or by sampling ({name}={setting.default}); use a local DialoGPT for it"
            )
    if config.seed is None:
        config = config.replace(seed=secrets.randbelow(SEED_LIMIT) if config.do_sample else 0)
    return config


class Client:
    """Talks to a model server that serves a tfdialogpt export.

    `reply` and `replies` send text to the export's chat signature, which tokenizes, truncates
    the history, decodes and detokenizes in the graph. The client is also a `tfdialogpt.chat`
    backend (`generate_ids`, `score_ids`, `max_positions`), so `Chat(Client(...), tokenizer)`
    chats over ids, with the history kept and tokenized here (and MMI reranking).

    Args:
        target: `host:port` of the gRPC endpoint.
        model_name: the served model's name (`--model_name` of the server).
        tokenizer: a `tfdialogpt.Tokenizer`, or a directory / hub id to load one from; only
            needed to use the client as a `Chat` backend's ids (not by `reply`).
        version: ask for this version; None lets the server pick its newest.
        signature: the generate signature to call: `generate` (any server) or
            `generate_xla` (TF Serving started with its XLA flags).
        chat_signature: the chat signature `reply` calls: `chat` or `chat_xla`.
        timeout: seconds allowed to every call unless the call passes its own.
        max_positions: the model's positions (1024 for DialoGPT); bounds history length.
        eos_token_id: `<|endoftext|>`, also used as padding; the tokenizer's if given.
        channel: an existing `grpc.Channel` to use instead of opening one.
        credentials: TLS (`grpc.ssl_channel_credentials(root_certificates=...)`, with a client
            key and certificate for a server with `client_verify`); None: plain.

    Raises (from every call): `InvalidRequestError`, `ModelNotFoundError`,
    `ServerUnavailableError`, `ServingTimeoutError`, or `ServingError` for other codes.

    Example:
        >>> with Client("localhost:8500", tokenizer=tokenizer) as client:  # doctest: +SKIP
        ...     out = client.generate([[15496, 50256]], max_new_tokens=8)
        ...     out.sequences.shape, out.model_spec.version
        ((1, 8), 3)
    """

    def __init__(
        self,
        target: str,
        model_name: str = "dialogpt",
        *,
        tokenizer: Any = None,
        version: int | None = None,
        signature: str = contract.GENERATE_SIGNATURE,
        chat_signature: str = contract.CHAT_SIGNATURE,
        timeout: float = DEFAULT_TIMEOUT,
        max_positions: int = 1024,
        eos_token_id: int | None = None,
        channel: grpc.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ):
        if signature not in contract.SIGNATURES or contract.SIGNATURES[signature].inputs != contract.GENERATE.inputs:
            generate_names = [n for n, s in contract.SIGNATURES.items() if s.inputs == contract.GENERATE.inputs]
            raise ValueError(f"signature must be one of {generate_names}, got {signature!r}")
        chat_names = [n for n, s in contract.SIGNATURES.items() if s.inputs == contract.CHAT.inputs]
        if chat_signature not in chat_names:
            raise ValueError(f"chat_signature must be one of {chat_names}, got {chat_signature!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout}")
        self.target, self.model_name, self.version = target, model_name, version
        self.chat_signature = chat_signature
        self.signature, self.timeout, self.max_positions = signature, timeout, max_positions
        self._tokenizer = tokenizer
        if eos_token_id is None:
            eos_token_id = getattr(tokenizer, "eos_token_id", GPT2_EOS_ID)
        self.eos_token_id = eos_token_id
        self._own_channel = channel is None
        options = [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ]
        if channel is None:
            channel = (
                grpc.insecure_channel(target, options=options)
                if credentials is None
                else grpc.secure_channel(target, credentials, options=options)
            )
        self._channel = channel
        api = apis()
        self._predict = api.prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = api.model_service_pb2_grpc.ModelServiceStub(self._channel)

    # ---- lifecycle ----
    def close(self) -> None:
        """Closes the channel (if this client opened it)."""
        if self._own_channel:
            self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.target!r}, {self.model_name!r}, signature={self.signature!r})"

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            raise ValueError("this client has no tokenizer; pass tokenizer= (a Tokenizer, directory or hub id)")
        if not hasattr(self._tokenizer, "encode_dialogue"):
            from tfdialogpt.tokenizer import Tokenizer

            self._tokenizer = Tokenizer.from_pretrained(self._tokenizer)
            self.eos_token_id = self._tokenizer.eos_token_id
        return self._tokenizer

    # ---- calls ----
    def _call(self, method: str, rpc, request, timeout: float | None):
        timeout = self.timeout if timeout is None else timeout
        try:
            return rpc(request, timeout=timeout)
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else None
            details = (err.details() if hasattr(err, "details") else "") or ""
            name = code.name if code is not None else "UNKNOWN"
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                details = details or f"no answer within {timeout} s"
            cls = _ERROR_CLASSES.get(code, ServingError)
            message = f"{method} to {self.target} (model {self.model_name!r}) failed with {name}: {details}"
            raise cls(message, code=code, details=details) from None

    def _model_spec(self, proto, signature: str | None = None) -> None:
        proto.name = self.model_name
        if self.version is not None:
            proto.version.value = self.version
        if signature is not None:
            proto.signature_name = signature

    def predict(self, signature: str, inputs: dict[str, np.ndarray], timeout: float | None = None):
        """One raw Predict call: (outputs as numpy arrays, echoed `ModelSpec`)."""
        request = apis().predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, signature)
        for key, value in inputs.items():
            to_tensor_proto(value, request.inputs[key])
        response = self._call("Predict", self._predict.Predict, request, timeout)
        spec = response.model_spec
        echoed = ModelSpec(spec.name, int(spec.version.value), spec.signature_name or signature)
        return {key: to_ndarray(value) for key, value in response.outputs.items()}, echoed

    def generate(
        self,
        input_ids,
        attention_mask=None,
        *,
        config: GenerationConfig | None = None,
        signature: str | None = None,
        timeout: float | None = None,
        **settings,
    ) -> Generation:
        """Continues prompts on the server; settings as in `DialoGPT.generate`.

        Args:
            input_ids: a list of id lists (padded here, on the left), or an int array [B, T]
                already left-padded, with `attention_mask`.
            attention_mask: [B, T] for an array `input_ids`.
            config: a `GenerationConfig` (default: its defaults), with `settings` on top
                (`max_new_tokens` up to the export's cap, `do_sample`, `top_p`, `seed`,
                `no_repeat_ngram_size` up to the export's bound, ...). Beam search and
                `min_new_tokens` are not served: use a local DialoGPT for them.
            signature: overrides the client's generate signature for this call.
            timeout: seconds for this call.

        Raises:
            InvalidRequestError: a bad setting (before any call).
            ValueError: a setting that is not served.
            ServingError: the call failed.
        """
        config = _served_config((config or GenerationConfig()).replace(**settings) if settings else config)
        ids, mask = self._prompt_batch(input_ids, attention_mask, config.max_new_tokens)
        # One value per row: TF Serving's batcher concatenates every input along the rows.
        inputs = {"input_ids": ids, "attention_mask": mask}
        inputs.update(contract.setting_inputs({name: getattr(config, name) for name in contract.PARAMETERS}, len(ids)))
        outputs, spec = self.predict(signature or self.signature, inputs, timeout)
        return Generation(outputs["sequences"], outputs["lengths"], spec)

    def _prompt_batch(self, input_ids, attention_mask, max_new_tokens: int):
        if isinstance(input_ids, np.ndarray) and input_ids.ndim == 2:
            ids = input_ids.astype(np.int32)
            mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, np.int32)
            return ids, mask
        rows = [list(row) for row in input_ids]
        if not rows or any(not row for row in rows):
            raise ValueError("input_ids must hold at least one non-empty prompt")
        # Left padding to the buckets `model.generate` uses: few distinct shapes reach XLA.
        width = padding.padded_length(max(len(row) for row in rows), max_new_tokens, self.max_positions)
        return padding.left_pad(rows, self.eos_token_id, width)

    def score(
        self, contexts: Sequence[Sequence[int]], replies: Sequence[Sequence[int]], timeout: float | None = None
    ) -> Scores:
        """log P(reply | context) for each pair, summed over the reply's tokens.

        Args:
            contexts: non-empty id lists (e.g. a dialogue history ending with EOS).
            replies: one non-empty id list per context.
        """
        ids, mask, target = padding.score_batch(contexts, replies, self.eos_token_id)
        outputs, spec = self.predict(
            contract.SCORE_SIGNATURE, {"input_ids": ids, "attention_mask": mask, "target_mask": target}, timeout
        )
        return Scores(outputs["log_probs"], outputs["num_tokens"], spec)

    def replies(
        self,
        histories: Sequence[Sequence[str]],
        *,
        config: GenerationConfig | None = None,
        timeout: float | None = None,
        **settings,
    ) -> list[str]:
        """Replies to several dialogue histories in one Predict call of the chat signature.

        Args:
            histories: each a list of turns, oldest first, the user's newest last.
            config: a `GenerationConfig` whose served settings are all sent; without it
                only `settings` are sent and the export's defaults (its model's
                `generation_config`) fill in the rest.
            timeout: seconds for this call.
            **settings: served settings by name (`max_new_tokens`, `do_sample`, `seed`, ...).

        Raises:
            InvalidRequestError: a bad setting or an empty history (before any call), or the
                server refused the request.
            ValueError: a setting that is not served, or a turn with no UTF-8 form (a lone
                surrogate).
        """
        rows = [[history] if isinstance(history, str) else list(history) for history in histories]
        for i, row in enumerate(rows):
            if not row or any(not isinstance(turn, str) for turn in row) or not row[-1]:
                raise InvalidRequestError(
                    f"history {i} must be a non-empty list of turns (strings), the newest non-empty",
                    code=grpc.StatusCode.INVALID_ARGUMENT,
                )
        if not rows:
            return []
        full = _served_config((config or GenerationConfig()).replace(**settings))
        sent = contract.PARAMETERS if config is not None else settings
        if "do_sample" in sent and "seed" not in sent:
            sent = {**sent, "seed": None}  # sampled with a fresh seed, as `generate` does
        # A bucketed slot count, so requests share shapes (TF Serving's batcher needs them equal).
        width = padding.round_up(max(len(row) for row in rows), contract.TURN_SLOT_BUCKETS)
        turns = np.full((len(rows), width), "", object)  # sent as UTF-8 by `to_tensor_proto`
        for i, row in enumerate(rows):
            turns[i, : len(row)] = row
        inputs = {"turns": turns}
        every = contract.setting_inputs({name: getattr(full, name) for name in contract.PARAMETERS}, len(rows))
        inputs.update({name: every[name] for name in sent})  # one value per row
        outputs, _ = self.predict(self.chat_signature, inputs, timeout)
        return [reply.decode("utf-8") for reply in outputs["reply"].tolist()]

    def reply(self, history: Sequence[str] | str, **settings) -> str:
        """The model's reply to a dialogue history (turns oldest first; a str is one turn),
        from the chat signature. Keywords are those of `replies`."""
        return self.replies([history], **settings)[0]

    # ---- the chat backend protocol ----
    def generate_ids(self, histories: Sequence[Sequence[int]], **sampling) -> list[list[int]]:
        """Continuations (without the closing EOS) for each history, one Predict call."""
        return self.generate([list(h) for h in histories], **sampling).token_lists(self.eos_token_id)

    def score_ids(self, contexts, replies) -> np.ndarray:
        return self.score(contexts, replies).log_probs

    # ---- model status and metadata ----
    def status(self, timeout: float | None = None) -> dict[int, tuple[str, str]]:
        """Version -> (state name, error message) from `ModelService.GetModelStatus`."""
        api = apis()
        request = api.get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec)
        response = self._call("GetModelStatus", self._models.GetModelStatus, request, timeout)
        state_name = api.get_model_status_pb2.ModelVersionStatus.State.Name
        return {int(s.version): (state_name(s.state), s.status.error_message) for s in response.model_version_status}

    def metadata(self, timeout: float | None = None) -> tuple[ModelSpec, dict[str, Any]]:
        """(ModelSpec, signature name -> `SignatureDef`) from `GetModelMetadata`."""
        api = apis()
        request = api.get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec)
        response = self._call("GetModelMetadata", self._predict.GetModelMetadata, request, timeout)
        signature_map = api.get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        spec = ModelSpec(response.model_spec.name, int(response.model_spec.version.value), "")
        return spec, dict(signature_map.signature_def)

    def wait_until_available(self, timeout: float = 60.0, poll: float = 0.2) -> int:
        """Blocks until some version is AVAILABLE; returns the newest such version.

        Raises:
            ServingTimeoutError: none became available within `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            try:
                available = [
                    v for v, (state, _) in self.status(timeout=min(5.0, timeout)).items() if state == "AVAILABLE"
                ]
                if available:
                    return max(available)
                last = "no version AVAILABLE"
            except (ServerUnavailableError, ModelNotFoundError, ServingTimeoutError) as err:
                last = str(err)
            time.sleep(poll)
        raise ServingTimeoutError(f"model {self.model_name!r} at {self.target} not available after {timeout} s: {last}")
