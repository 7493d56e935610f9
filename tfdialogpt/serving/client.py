"""A client for a served DialoGPT export: ids over TF Serving's gRPC API, text handled locally.

Works the same against the real `tensorflow_model_server` and against
`tfdialogpt.serving.server`. It needs no weights and does not start TensorFlow: requests are
built from the shared contract (`signatures.py`) with numpy and the `tensorflow-serving-api`
protos (`protos.py`).

Example:
    >>> from tfdialogpt.serving import Client
    >>> with Client("localhost:8500", "dialogpt", tokenizer="./dialogpt-small") as client:  # doctest: +SKIP
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


class Client:
    """Talks to a model server that serves a tfdialogpt export.

    Also usable as a `tfdialogpt.chat` backend (`generate_ids`, `score_ids`, `max_positions`),
    so `Chat(Client(...), tokenizer)` chats with a served model.

    Args:
        target: `host:port` of the gRPC endpoint.
        model_name: the served model's name (`--model_name` of the server).
        tokenizer: a `tfdialogpt.Tokenizer`, or a directory / hub id to load one from; only
            needed by `reply` and `replies` (loaded on first use).
        version: ask for this version; None lets the server pick its newest.
        signature: the generate signature to call: `generate` (any server) or
            `generate_xla` (TF Serving started with its XLA flags).
        timeout: seconds allowed to every call unless the call passes its own.
        max_positions: the model's positions (1024 for DialoGPT); bounds history length.
        eos_token_id: `<|endoftext|>`, also used as padding; the tokenizer's if given.
        channel: an existing `grpc.Channel` to use instead of opening one.

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
        timeout: float = DEFAULT_TIMEOUT,
        max_positions: int = 1024,
        eos_token_id: int | None = None,
        channel: grpc.Channel | None = None,
    ):
        if signature not in contract.SIGNATURES or contract.SIGNATURES[signature].inputs != contract.GENERATE.inputs:
            generate_names = [n for n, s in contract.SIGNATURES.items() if s.inputs == contract.GENERATE.inputs]
            raise ValueError(f"signature must be one of {generate_names}, got {signature!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout}")
        self.target, self.model_name, self.version = target, model_name, version
        self.signature, self.timeout, self.max_positions = signature, timeout, max_positions
        self._tokenizer = tokenizer
        if eos_token_id is None:
            eos_token_id = getattr(tokenizer, "eos_token_id", GPT2_EOS_ID)
        self.eos_token_id = eos_token_id
        self._own_channel = channel is None
        self._channel = channel or grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ],
        )
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
        max_new_tokens: int = contract.PARAMETERS["max_new_tokens"].default,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        num_beams: int = 1,
        no_repeat_ngram_size: int = 0,
        min_new_tokens: int = 0,
        signature: str | None = None,
        timeout: float | None = None,
    ) -> Generation:
        """Continues prompts on the server (argument names as in HF `generate`).

        Args:
            input_ids: a list of id lists (padded here, on the left), or an int array [B, T]
                already left-padded, with `attention_mask`.
            attention_mask: [B, T] for an array `input_ids`.
            max_new_tokens: at most this many new tokens (up to the export's cap).
            do_sample: sample (with `temperature`, `top_k`, `top_p`); False decodes greedily.
            seed: makes sampling reproducible; a random one if None.
            num_beams, no_repeat_ngram_size, min_new_tokens: accepted for compatibility with
                `DialoGPT.generate`, but only their defaults: the served signatures decode
                greedily or by sampling, without those processors.
            signature: overrides the client's generate signature for this call.
            timeout: seconds for this call.
        """
        for name, value, default in (
            ("num_beams", num_beams, 1),
            ("no_repeat_ngram_size", no_repeat_ngram_size, 0),
            ("min_new_tokens", min_new_tokens, 0),
        ):
            if value != default:
                raise ValueError(
                    f"{name}={value} is not served: the exported signatures decode greedily or by "
                    f"sampling ({name}={default}); use a local DialoGPT for it"
                )
        if do_sample and temperature <= 0:
            raise ValueError(f"do_sample=True needs a positive temperature, got {temperature}")
        ids, mask = self._prompt_batch(input_ids, attention_mask, max_new_tokens)
        if seed is None:
            seed = secrets.randbelow(2**31) if do_sample else 0
        values = {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature if do_sample else 0.0,
            "top_k": top_k,
            "top_p": top_p,
            "repetition_penalty": repetition_penalty,
            "seed": seed,
        }
        inputs = {"input_ids": ids, "attention_mask": mask}
        for name, parameter in contract.PARAMETERS.items():
            inputs[name] = np.asarray(values[name], parameter.spec.np_dtype)
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
        # Left padding to the contract's buckets: few distinct shapes reach XLA.
        width = contract.padded_length(max(len(row) for row in rows), max_new_tokens, self.max_positions)
        ids = np.full((len(rows), width), self.eos_token_id, np.int32)
        mask = np.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = row
            mask[i, width - len(row) :] = 1
        return ids, mask

    def score(self, contexts: Sequence[Sequence[int]], replies: Sequence[Sequence[int]], timeout: float | None = None) -> Scores:
        """log P(reply | context) for each pair, summed over the reply's tokens.

        Args:
            contexts: non-empty id lists (e.g. a dialogue history ending with EOS).
            replies: one non-empty id list per context.
        """
        if len(contexts) != len(replies):
            raise ValueError(f"got {len(contexts)} contexts but {len(replies)} replies")
        if not contexts:
            raise ValueError("nothing to score: no contexts given")
        width = max(len(c) + len(r) for c, r in zip(contexts, replies, strict=True))
        ids = np.full((len(contexts), width), self.eos_token_id, np.int32)
        mask, target = np.zeros_like(ids), np.zeros_like(ids)
        for i, (context, reply) in enumerate(zip(contexts, replies, strict=True)):
            if not len(context) or not len(reply):
                raise ValueError(f"row {i}: context and reply must both be non-empty")
            n = len(context) + len(reply)
            ids[i, :n] = list(context) + list(reply)
            mask[i, :n] = 1
            target[i, len(context) : n] = 1
        outputs, spec = self.predict(
            contract.SCORE_SIGNATURE, {"input_ids": ids, "attention_mask": mask, "target_mask": target}, timeout
        )
        return Scores(outputs["log_probs"], outputs["num_tokens"], spec)

    def replies(self, histories: Sequence[Sequence[str]], *, max_new_tokens: int = contract.PARAMETERS["max_new_tokens"].default, timeout: float | None = None, **sampling) -> list[str]:
        """Replies to several dialogue histories in one Predict call (tokenized here)."""
        tokenizer = self.tokenizer
        budget = self.max_positions - max_new_tokens
        prompts = [tokenizer.encode_dialogue(list(history), max_length=budget) for history in histories]
        out = self.generate(prompts, max_new_tokens=max_new_tokens, timeout=timeout, **sampling)
        return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in out.token_lists(self.eos_token_id)]

    def reply(self, history: Sequence[str] | str, **sampling) -> str:
        """The model's reply to a dialogue history (turns oldest first; a str is one turn).

        Keyword arguments are those of `generate` (`max_new_tokens`, `do_sample`, `top_p`, ...).
        """
        history = [history] if isinstance(history, str) else list(history)
        return self.replies([history], **sampling)[0]

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
        return {
            int(s.version): (state_name(s.state), s.status.error_message) for s in response.model_version_status
        }

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
                available = [v for v, (state, _) in self.status(timeout=min(5.0, timeout)).items() if state == "AVAILABLE"]
                if available:
                    return max(available)
                last = "no version AVAILABLE"
            except (ServerUnavailableError, ModelNotFoundError, ServingTimeoutError) as err:
                last = str(err)
            time.sleep(poll)
        raise ServingTimeoutError(f"model {self.model_name!r} at {self.target} not available after {timeout} s: {last}")
