"""The versions of a served model: each one loaded, warmed up, served and unloaded as TF Serving does.

- `Servable` is one loaded SavedModel version (`BASE/<version>/saved_model.pb`): its
  signatures (the contract's, checked against the loaded ones), its export limits, and a count
  of requests in flight so an unload waits for them.
- `ModelVersions` polls a model's base directory: the newest `num_versions` versions are served
  and a request without a version gets the newest. A new version is loaded (and warmed up from
  its `assets.extra/tf_serving_warmup_requests`) beside the old one, then takes over; requests
  in flight finish on the version they started on. A version that fails to load is refused
  with a logged error while the old one keeps serving; it is retried only if its files change
  (`_fingerprint`).
- An unloaded version's memory is given back (`saved_models.release_saved_model`: TensorFlow
  keeps every load's graphs alive through its process-wide gradient registry otherwise). See
  benchmarks/rollover.py and benchmarks/RESULTS.md.

TensorFlow is imported only when a version is loaded or run.

Example:
    >>> versions = ModelVersions("dialogpt", "/models/dialogpt", num_versions=2)  # doctest: +SKIP
    >>> versions.poll(); versions.available_versions()  # doctest: +SKIP
    [1, 2]
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from collections.abc import Mapping

import grpc
import numpy as np

from tfdialogpt.serving import cancellation
from tfdialogpt.serving import signatures as contract
from tfdialogpt.serving.errors import InvalidRequestError, ModelNotFoundError, RequestCancelledError, ServingError
from tfdialogpt.serving.protos import apis, to_ndarray
from tfdialogpt.serving.request_checks import check_inputs
from tfdialogpt.serving.saved_models import load_saved_model, release_saved_model

log = logging.getLogger("tfdialogpt.serving")

# ---- one loaded version ----------------------------------------------------------------------


class Servable:
    """One loaded SavedModel version: its signatures, limits and warm-up state.

    Mark requests with `acquire()` / `release()` so an unload waits for running ones
    (`wait_idle()`), then `close()` it to give its memory back.
    """

    def __init__(self, model_name: str, version: int, path: str):
        import tensorflow_text  # noqa: F401  (registers TF Text's ops, which TF Serving links: the chat's tokenizer)

        self.model_name, self.version, self.path = model_name, version, path
        saved_model = apis().saved_model_pb2.SavedModel()
        with open(os.path.join(path, contract.SAVED_MODEL_FILE), "rb") as f:
            saved_model.ParseFromString(f.read())
        graphs = [g for g in saved_model.meta_graphs if contract.SERVING_TAG in g.meta_info_def.tags]
        if not graphs:
            raise ValueError(f"saved_model.pb has no MetaGraph tagged {contract.SERVING_TAG!r}")
        self.signature_defs = graphs[0].signature_def
        self._loaded, self._gradients = load_saved_model(path, tags=[contract.SERVING_TAG])
        try:
            self.functions = dict(self._loaded.signatures)
            if not self.functions:
                raise ValueError("the SavedModel has no signatures")
            self.signatures = {name: self._signature_of(name, fn) for name, fn in self.functions.items()}
        except BaseException:
            self.close()
            raise
        # Each signature's defaults for inputs a request may leave out, decoded once.
        self._defaults = {
            name: {key: to_ndarray(proto) for key, proto in self.signature_defs[name].defaults.items()}
            for name in self.functions
            if name in self.signature_defs
        }
        self.limits = self._read_limits()
        self._in_flight = 0
        self._idle = threading.Condition()

    def _signature_of(self, name: str, fn) -> contract.Signature:
        """The contract's signature when it matches the loaded one; else one read from the model."""
        specs = fn.structured_input_signature[1]
        loaded = {key: (np.dtype(spec.dtype.as_numpy_dtype).name, spec.shape.rank) for key, spec in specs.items()}
        if name in contract.SIGNATURES:
            sig = contract.SIGNATURES[name]
            expected = {s.name: (s.np_dtype.name, s.rank) for s in sig.inputs}
            if loaded != expected:
                raise ValueError(
                    f"signature {name!r} takes {_describe_specs(loaded)}; the contract expects "
                    f"{_describe_specs(expected)}"
                )
            return sig
        inputs = tuple(
            contract.TensorSpec(key, dtype, tuple(f"d{i}" for i in range(rank or 0)), "")
            for key, (dtype, rank) in sorted(loaded.items())
        )
        outputs = tuple(contract.TensorSpec(key, "float32", (), "") for key in sorted(fn.structured_outputs))
        return contract.Signature(name, inputs, outputs, "")

    def _read_limits(self) -> contract.Limits | None:
        path = os.path.join(self.path, contract.ASSETS_EXTRA_DIR, contract.METADATA_FILE)
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as f:
            return contract.Limits.from_json_dict(json.load(f))

    def warmup(self) -> int:
        """Runs the warmup records, as TF Serving does before a version becomes available."""
        import tensorflow as tf

        path = os.path.join(self.path, contract.ASSETS_EXTRA_DIR, contract.WARMUP_FILE)
        if not os.path.exists(path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(path).take(contract.MAX_WARMUP_RECORDS):
            entry = apis().prediction_log_pb2.PredictionLog.FromString(record.numpy())
            request = entry.predict_log.request
            name = request.model_spec.signature_name or contract.DEFAULT_SIGNATURE
            inputs = {key: to_ndarray(proto) for key, proto in request.inputs.items()}
            self.run(name, self._with_defaults(name, inputs))
            count += 1
        return count

    def _with_defaults(self, name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`inputs` plus the SignatureDef's defaults for the inputs left out, as TF Serving fills them."""
        defaults = self._defaults.get(name, {})
        return {**{key: value for key, value in defaults.items() if key not in inputs}, **inputs}

    def check(self, name: str, inputs: dict[str, np.ndarray]) -> contract.Signature:
        """The signature `name` after checking `inputs` against it; raises `InvalidRequestError`.

        Inputs the request left out that the SignatureDef has defaults for are filled into
        `inputs` first, as TF Serving does.
        """
        name = name or contract.DEFAULT_SIGNATURE
        if name not in self.functions:
            raise InvalidRequestError(
                f"signature {name!r} not found in model {self.model_name!r} version {self.version}; "
                f"it has {', '.join(sorted(self.functions))}"
            )
        inputs.update(self._with_defaults(name, inputs))
        sig = self.signatures[name]
        try:
            check_inputs(sig, inputs, self.limits)
        except contract.ContractError as err:
            raise InvalidRequestError(str(err)) from None
        return sig

    def run(self, name: str, inputs: Mapping[str, np.ndarray], run: cancellation.Run | None = None) -> dict:
        """Runs a signature on numpy inputs; graph errors become INVALID_ARGUMENT or INTERNAL.
        Stopped by `run.cancel()` (CANCELLED) at its next loop step (a chunk of the prompt's
        forward pass, or a decode step) unless XLA-compiled."""
        import tensorflow as tf

        fn = self.functions[name]
        run = run or cancellation.Run()
        try:
            with run.active():
                outputs = fn(**{key: tf.constant(value) for key, value in inputs.items()})
        except tf.errors.CancelledError:
            raise RequestCancelledError(f"signature {name!r} was stopped: its clients went away") from None
        except tf.errors.InvalidArgumentError as err:
            raise InvalidRequestError(f"signature {name!r} rejected the request: {_reason(err.message)}") from None
        except (tf.errors.OpError, ValueError, TypeError) as err:
            raise ServingError(f"signature {name!r} failed: {err}", grpc.StatusCode.INTERNAL) from None
        return {key: value.numpy() for key, value in outputs.items()}

    # In-flight accounting, so an unloaded version is released only when idle.
    def acquire(self) -> None:
        with self._idle:
            self._in_flight += 1

    def release(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def close(self) -> None:
        """Drops the loaded SavedModel and releases its memory (`release_saved_model`); call it
        once no request runs on this version. It cannot serve afterwards."""
        self.functions, self._loaded = {}, None
        gradients, self._gradients = self._gradients, []
        release_saved_model(gradients)


def _reason(message: str) -> str:
    """The failed in-graph check's own words (`assertion failed: [...]`), without TF's node
    names and stack-trace notes; the whole message if it has none."""
    for line in message.splitlines():
        if line.startswith("assertion failed:"):
            return line[len("assertion failed:") :].strip()
    return message


def _describe_specs(specs: Mapping[str, tuple[str, int]]) -> str:
    return ", ".join(f"{k} ({d}, rank {r})" for k, (d, r) in sorted(specs.items()))


# ---- the versions of one model ---------------------------------------------------------------

State = collections.namedtuple("State", "state error_code error_message")
START, LOADING, AVAILABLE, UNLOADING, END = 10, 20, 30, 40, 50
_UNKNOWN_ERROR = 2  # tensorflow.error.Code UNKNOWN, reported for a version that failed to load


def _fingerprint(path: str) -> tuple:
    """What changes when a version directory's files change (names, sizes, mtimes)."""
    entries = []
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            entries.append((os.path.relpath(os.path.join(root, name), path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(entries))


class ModelVersions:
    """Loads, serves and unloads the versions found under a model's base path.

    Args:
        name: the model name requests must use.
        base_path: the directory holding `<version>/saved_model.pb`.
        num_versions: how many of the newest versions to keep serving (TF Serving's `latest`
            version policy).
        warmup: run each version's warmup records before it serves.
    """

    def __init__(self, name: str, base_path: str, num_versions: int = 1, warmup: bool = True):
        if num_versions < 1:
            raise ValueError(f"num_versions must be at least 1, got {num_versions}")
        if os.path.exists(base_path) and not os.path.isdir(base_path):
            raise ValueError(f"model base path {base_path} is a file; it must be a directory of version directories")
        self.name, self.base_path = name, os.path.abspath(base_path)
        self.num_versions, self.warmup = num_versions, warmup
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._servables: dict[int, Servable] = {}
        self._states: dict[int, State] = {}
        self._failed: dict[int, tuple] = {}  # version -> fingerprint of the files that failed

    def _on_disk(self) -> dict[int, str]:
        try:
            names = os.listdir(self.base_path)
        except (FileNotFoundError, NotADirectoryError):  # not there (yet), or replaced by a file
            return {}
        found = {}
        for entry in names:
            path = os.path.join(self.base_path, entry)
            if entry.isascii() and entry.isdigit() and os.path.isdir(path):  # not "²": isdigit, not int
                found[int(entry)] = path
        return found

    def poll(self) -> None:
        """One pass: loads new versions, unloads those the policy no longer keeps."""
        with self._poll_lock:
            on_disk = self._on_disk()
            for version, fingerprint in list(self._failed.items()):
                if version not in on_disk or _fingerprint(on_disk[version]) != fingerprint:
                    del self._failed[version]  # changed or gone: may be retried
            with self._lock:
                loaded = set(self._servables)
            candidates = sorted((v for v in on_disk if v not in self._failed), reverse=True)
            for version in candidates[: self.num_versions]:
                if version not in loaded:
                    self._load(version, on_disk[version])
            with self._lock:
                available = sorted(self._servables, reverse=True)
                keep = set(available[: self.num_versions]) & set(on_disk)
                dropped = [self._servables.pop(v) for v in available if v not in keep]
                for servable in dropped:
                    self._states[servable.version] = State(UNLOADING, 0, "")
            for servable in dropped:
                threading.Thread(target=self._unload, args=(servable,), daemon=True).start()

    def _load(self, version: int, path: str) -> None:
        with self._lock:
            self._states[version] = State(LOADING, 0, "")
        log.info("loading version %d of model %r from %s", version, self.name, path)
        started = time.perf_counter()
        servable = None
        try:
            if not os.path.exists(os.path.join(path, contract.SAVED_MODEL_FILE)):
                raise FileNotFoundError(f"no {contract.SAVED_MODEL_FILE} in {path}")
            servable = Servable(self.name, version, path)
            warmed = servable.warmup() if self.warmup else 0
        except Exception as err:  # any failure refuses this version; the old one keeps serving
            if servable is not None:
                servable.close()
                servable = None
            message = f"{type(err).__name__}: {err}".strip()
            self._failed[version] = _fingerprint(path)
            with self._lock:
                self._states[version] = State(END, _UNKNOWN_ERROR, message[:2000])
            log.error(
                "refused version %d of model %r at %s: %s (still serving %s)",
                version,
                self.name,
                path,
                message.splitlines()[0] if message else type(err).__name__,
                self.available_versions() or "nothing",
            )
            return
        with self._lock:
            self._servables[version] = servable
            self._states[version] = State(AVAILABLE, 0, "")
        log.info(
            "version %d of model %r is available (%.1f s, %d warmup requests)",
            version,
            self.name,
            time.perf_counter() - started,
            warmed,
        )

    def _unload(self, servable: Servable) -> None:
        servable.wait_idle()
        started = time.perf_counter()
        servable.close()
        with self._lock:
            self._states[servable.version] = State(END, 0, "")
        log.info(
            "unloaded version %d of model %r (memory released in %.1f s)",
            servable.version,
            self.name,
            time.perf_counter() - started,
        )

    def available_versions(self) -> list[int]:
        with self._lock:
            return sorted(self._servables)

    def known_signatures(self) -> set[str]:
        """The signature names of the versions being served."""
        with self._lock:
            return {name for servable in self._servables.values() for name in servable.functions}

    def acquire(self, version: int | None = None) -> Servable:
        """The servable for `version` (newest if None), marked in flight; call `release()`.

        Raises:
            ModelNotFoundError: NOT_FOUND if the version is not being served.
        """
        with self._lock:
            if not self._servables:
                raise ModelNotFoundError(
                    f"model {self.name!r} has no version available yet (base path {self.base_path})",
                )
            if version is None:
                version = max(self._servables)
            servable = self._servables.get(version)
            if servable is None:
                raise ModelNotFoundError(
                    f"version {version} of model {self.name!r} is not being served; available: "
                    f"{sorted(self._servables)}",
                )
            servable.acquire()
            return servable

    def states(self, version: int | None = None) -> dict[int, State]:
        with self._lock:
            if version is None:
                return dict(self._states)
            if version not in self._states:
                raise ModelNotFoundError(
                    f"version {version} of model {self.name!r} was never seen; known: {sorted(self._states)}",
                )
            return {version: self._states[version]}
