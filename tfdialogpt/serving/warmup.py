"""Warmup records: the `PredictionLog`s TF Serving replays from
`assets.extra/tf_serving_warmup_requests` before it serves a version, one per signature,
prompt-length bucket and batch size, so no user request pays for a first compile."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tfdialogpt.serving import signatures as contract
from tfdialogpt.serving.protos import apis, to_tensor_proto


def _warmup_inputs(name: str, limits: contract.Limits, length: int, batch: int) -> dict[str, np.ndarray]:
    """One warmup request's inputs: a prompt of `length` tokens in every row. Generate requests
    ask for 2 new tokens: enough to run the prefill and a decode step of every compiled shape."""
    sig = contract.SIGNATURES[name]
    new = min(2, limits.max_new_tokens_cap)
    if sig.inputs[0].name == "turns":
        # A literal <|endoftext|> is the EOS id in every tokenizer: length - 1 of them and the
        # turn's closing EOS make `length` tokens. The other settings keep the export's defaults.
        # serving_default has no settings: it decodes its default max_new_tokens.
        turns = np.full((batch, 1), ("<|endoftext|>" * (length - 1)).encode(), object)
        if name == contract.DEFAULT_SIGNATURE:
            return {"turns": turns}
        return {"turns": turns, "max_new_tokens": contract.PARAMETERS["max_new_tokens"].array(new, batch)}
    ids = np.full((batch, length), limits.eos_token_id, np.int32)
    if name == contract.SCORE_SIGNATURE:
        target = np.zeros_like(ids)
        target[:, -1] = 1
        return {"input_ids": ids, "attention_mask": np.ones_like(ids), "target_mask": target}
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    inputs.update(contract.setting_inputs({"max_new_tokens": new}, batch))
    return inputs


def warmup_requests(
    limits: contract.Limits,
    signature_names: Sequence[str],
    model_name: str = "dialogpt",
    batch_sizes: Sequence[int] = (1,),
) -> list:
    """`PredictionLog`s, one per signature, prompt-length bucket and batch size."""
    api = apis()
    lengths = [n for n in limits.warmup_prompt_lengths if n + 2 <= limits.max_positions] or [1]
    logs = []
    for name in signature_names:
        for length in lengths:
            for batch in batch_sizes:
                request = api.predict_pb2.PredictRequest()
                request.model_spec.name = model_name
                request.model_spec.signature_name = name
                for key, value in _warmup_inputs(name, limits, length, batch).items():
                    to_tensor_proto(value, request.inputs[key])
                logs.append(
                    api.prediction_log_pb2.PredictionLog(predict_log=api.prediction_log_pb2.PredictLog(request=request))
                )
    if len(logs) > contract.MAX_WARMUP_RECORDS:
        raise ValueError(f"{len(logs)} warmup records; TF Serving reads at most {contract.MAX_WARMUP_RECORDS}")
    return logs
