"""The code's structure: one home per setting, TF-free modules, module sizes, no import cycles."""

from __future__ import annotations

import argparse
import ast
import doctest
import gc
import importlib
import inspect
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

from tfdialogpt.generation_config import SERVED, SETTINGS, GenerationConfig

PACKAGE = Path(__file__).resolve().parents[1] / "tfdialogpt"
MAX_MODULE_LINES = 450
# Modules a client (or a data-preparing worker) imports without TensorFlow.
TF_FREE = [
    "tfdialogpt.config",
    "tfdialogpt.generation_config",
    "tfdialogpt.padding",
    "tfdialogpt.hub",
    "tfdialogpt.checkpoint_files",
    "tfdialogpt._text_checks",
    "tfdialogpt.serving.signatures",
    "tfdialogpt.serving.errors",
    "tfdialogpt.serving.client",
    "tfdialogpt.serving.warmup",
    "tfdialogpt.serving.rest_json",
    "tfdialogpt.serving.rest_api",
    "tfdialogpt.serving.metrics",
    "tfdialogpt.serving.limits",
    "tfdialogpt.serving.tls",
    "tfdialogpt.chat",
    "tfdialogpt._sentencepiece_bpe",
    "tfdialogpt.training.dialogues",
    "tfdialogpt.training.readers",
    "tfdialogpt.training.ccc",
    "tfdialogpt.training.examples",
    "tfdialogpt.training.records",
    "tfdialogpt.training.chunks",
    "tfdialogpt.training.shards",
    "tfdialogpt.training.prepare",
    "tfdialogpt.training.settings",
    "tfdialogpt.training.sources",
]


# ---- GenerationConfig is the one home of every setting ---------------------------------------------


def test_signature_inputs_are_generation_config_fields():
    from tfdialogpt.serving import signatures as contract

    for sig in (contract.GENERATE, contract.GENERATE_XLA, contract.CHAT, contract.CHAT_XLA):
        settings = [spec for spec in sig.inputs if spec.name not in ("input_ids", "attention_mask", "turns")]
        assert [spec.name for spec in settings] == list(SERVED)
        for spec in settings:
            setting = SETTINGS[spec.name]
            assert np.dtype(spec.dtype).kind == {int: "i", float: "f", bool: "b"}[setting.kind], spec.name
            assert contract.PARAMETERS[spec.name].setting is setting
            assert contract.PARAMETERS[spec.name].default == (setting.default if setting.default is not None else 0)


def test_compiled_function_inputs_are_the_run_time_settings():
    from tfdialogpt.generation.engine import GENERATE_INPUTS

    names = [name for name, _ in GENERATE_INPUTS[2:]]
    assert names == [name for name, s in SETTINGS.items() if not s.static]
    # Served settings are run-time inputs, but for the n-gram size: static in `model.generate`,
    # an input of the per-row function the export builds (`max_no_repeat_ngram_size`).
    static_served = [name for name in SERVED if SETTINGS[name].static]
    assert set(SERVED) - set(static_served) <= set(names)
    assert static_served == ["no_repeat_ngram_size"]


def _decoding_flags(command: str) -> dict[str, argparse.Action]:
    from tfdialogpt.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    group = next(g for g in sub._action_groups if g.title and g.title.startswith("decoding"))
    return {a.dest: a for a in group._group_actions if a.dest != "no_xla"}


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_cli_decoding_flags_are_generation_config_fields(command):
    flags = _decoding_flags(command)
    assert set(flags) <= set(SETTINGS)
    assert set(SETTINGS) - set(flags) == {"eos_token_id", "pad_token_id"}
    for name, action in flags.items():
        assert action.default is None, f"--{name} must leave the default to GenerationConfig"
        assert action.option_strings == ["--" + name.replace("_", "-")]


def test_cli_flag_checks_the_range_before_loading_anything(capsys):
    from tfdialogpt.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["generate", "--top-p", "1.5", "Hi"])
    assert exit_info.value.code == 2
    assert "top_p=1.5 is out of range; expected a value in (0, 1]" in capsys.readouterr().err


def test_client_parameters_are_generation_config_fields():
    from tfdialogpt.serving.client import Client

    for method in (Client.generate, Client.replies):
        params = inspect.signature(method).parameters
        own = {"self", "input_ids", "attention_mask", "histories", "config", "signature", "timeout", "settings"}
        assert set(params) <= own, f"{method.__name__} lists a setting by hand: {set(params) - own}"
        assert params["settings"].kind is inspect.Parameter.VAR_KEYWORD


def test_generation_config_checks_and_json_round_trip(tmp_path):
    config = GenerationConfig(do_sample=True, top_p=0.9, seed=3, max_new_tokens=12)
    path = config.save_pretrained(tmp_path)
    assert path.name == "generation_config.json"
    assert GenerationConfig.from_json_file(path) == config
    # What transformers writes for DialoGPT reads as is.
    hf = {"_from_model_config": True, "bos_token_id": 50256, "eos_token_id": 50256, "transformers_version": "4.57.6"}
    assert GenerationConfig.from_json_dict(hf) == GenerationConfig(eos_token_id=50256)
    with pytest.raises(ValueError, match="unsupported generation setting 'typical_p'"):
        GenerationConfig.from_json_dict({"typical_p": 0.5})
    with pytest.raises(ValueError, match=r"min_new_tokens \(5\) exceeds max_new_tokens \(4\)"):
        GenerationConfig(max_new_tokens=4, min_new_tokens=5).validate()
    with pytest.raises(ValueError, match="seed=2147483648 is out of range"):
        GenerationConfig(seed=2**31).validate()
    with pytest.raises(ValueError, match="do_sample must be True or False"):
        GenerationConfig(do_sample="yes").validate()
    with pytest.raises(TypeError, match="unknown generation setting 'topp'"):
        config.replace(topp=0.5)


def test_model_reads_and_writes_generation_config(tmp_path, tiny_config):
    from tfdialogpt import DialoGPT

    model = DialoGPT(tiny_config)
    model.generation_config = GenerationConfig(do_sample=True, top_k=7)
    model.save_pretrained(tmp_path)
    loaded = DialoGPT.from_pretrained(tmp_path)
    assert loaded.generation_config == GenerationConfig(do_sample=True, top_k=7)
    (tmp_path / "generation_config.json").write_text('{"top_p": 3}')
    from tfdialogpt.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="top_p=3 is out of range"):
        DialoGPT.from_pretrained(tmp_path)


# ---- memory -------------------------------------------------------------------------------------


def test_a_model_that_generated_then_dropped_is_freed(tiny_config):
    from tfdialogpt import DialoGPT
    from tfdialogpt.generation import COMPILED

    model = DialoGPT(tiny_config)
    model.generate(np.array([[1, 2, 3]]), max_new_tokens=2)
    assert COMPILED.keys(model), "the compiled function is cached while the model lives"
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None, "the compiled-function cache (or something else) keeps the model alive"


def test_model_refuses_ids_outside_the_vocabulary(tiny_config):
    from tfdialogpt import DialoGPT

    model = DialoGPT(tiny_config)
    with pytest.raises(ValueError, match=r"input_ids\[0, 1\] = -7 is outside the vocabulary \[0, 211\)"):
        model(np.array([[1, -7, 2]]))
    with pytest.raises(ValueError, match="= 211 is outside the vocabulary"):
        model(np.array([[211]]))


# ---- layering -----------------------------------------------------------------------------------


@pytest.mark.parametrize("module", TF_FREE)
def test_module_imports_without_tensorflow(module):
    code = f"import sys, {module}; sys.exit(3 if 'tensorflow' in sys.modules else 0)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{module} imported TensorFlow" if proc.returncode == 3 else proc.stderr


@pytest.mark.parametrize("module", TF_FREE)
def test_doctests_of_tf_free_modules(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules `name` imports anywhere in its code (lazy imports count too)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def test_no_module_is_too_long():
    long = {
        name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_import_cycle_and_nothing_imports_the_cli():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) - {"tfdialogpt"} for name, path in modules.items()}
    # A package's own __init__ re-exporting its submodules is not a cycle of responsibilities.
    graph = {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()}
    importers = [name for name, targets in graph.items() if "tfdialogpt.cli" in targets]
    assert importers == ["tfdialogpt.__main__"], "only `python -m tfdialogpt` may import the CLI"
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for target in sorted(graph[node]):
            if target not in graph:
                continue
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_generation_does_not_import_the_model_or_a_tokenizer():
    modules = _modules()
    for name in [m for m in modules if m.startswith("tfdialogpt.generation.")]:
        imported = _imports(name, modules[name], set(modules))
        assert not imported & {"tfdialogpt.model", "tfdialogpt.tokenizer"}, name
