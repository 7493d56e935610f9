"""Memory of a model version rollover: RSS after each of N rollovers, per way of unloading.

Exports one model (random weights of the DialoGPT-small shape, or the tests' tiny model with
`--tiny`), then runs each variant in its own process (no shared allocator or TensorFlow state).
A rollover loads the export again as a new version, then drops the old one; RSS is read with
one version loaded, so it is comparable with the server's.

- `plain`: `tf.saved_model.load`, then `del` of the old version and `gc.collect()`;
- `trim`: the same, then glibc's `malloc_trim(0)`;
- `arena2`: `plain` with `MALLOC_ARENA_MAX=2` in the environment;
- `release`: `servables.load_saved_model` / `release_saved_model(trim=False)`: also removes the
  custom-gradient entries the load put into TensorFlow's process-wide gradient registry
  (TensorFlow never removes them, and each keeps the loaded functions' graphs alive);
- `release_trim`: `release`, then `malloc_trim(0)` (what the server does);
- `release_arena2`: `release_trim` with `MALLOC_ARENA_MAX=2`;
- `server`: `python -m tfdialogpt.serving.server --num-versions 1` (warmup on): each rollover
  copies the version directory to version N+1, waits until N+1 is AVAILABLE and N unloaded,
  removes N's directory, sends one request, and reads the server's RSS (and its peak, VmHWM).

    python benchmarks/rollover.py                       # DialoGPT-small shape, 6 rollovers
    python benchmarks/rollover.py --tiny --rollovers 4  # tiny model: a smoke run in about 5 min
    python benchmarks/rollover.py --variants plain,server

The `release*` variants need this checkout's `tfdialogpt`; the others run against any (point
PYTHONPATH at another checkout to measure its server).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

VARIANTS = {
    "plain": {},
    "trim": {},
    "arena2": {"MALLOC_ARENA_MAX": "2"},
    "release": {},
    "release_trim": {},
    "release_arena2": {"MALLOC_ARENA_MAX": "2"},
    "server": {},
}


def status(pid: int | str = "self") -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values


# ---- the in-process variants (one child process each) -----------------------------------------


def child(variant: str, path: str, rollovers: int) -> None:
    """Prints one JSON line per step: the RSS with one version loaded, after each rollover."""
    from tfdialogpt._quiet import import_tensorflow

    tf = import_tensorflow()
    import tensorflow_text  # noqa: F401  (the chat signatures' ops)

    release = variant.startswith("release")
    if release:
        from tfdialogpt.serving.saved_models import load_saved_model, release_saved_model
    libc = ctypes.CDLL("libc.so.6")

    def load():
        if release:
            return load_saved_model(path)
        return tf.saved_model.load(path), []

    def emit(step, **extra):
        print(json.dumps({"step": step, **status(), **extra}), flush=True)

    emit("start")
    current = load()
    emit(0)
    for step in range(1, rollovers + 1):
        started = time.perf_counter()
        new = load()
        old, current = current, new
        gradients = old[1]
        del old, new
        if release:
            release_saved_model(gradients, trim=variant != "release")
        else:
            gc.collect()
            if variant == "trim":
                libc.malloc_trim(0)
        emit(step, seconds=time.perf_counter() - started, gradients=len(gradients))


# ---- the server variant --------------------------------------------------------------------------


def server_rollovers(source: Path, workdir: Path, rollovers: int, vocab_size: int, eos: int, max_positions: int):
    from serving_utils import MODEL_NAME, ServerProcess

    from tfdialogpt.serving.client import Client

    base = workdir / "models" / MODEL_NAME
    base.mkdir(parents=True)
    shutil.copytree(source, base / "1")
    server = ServerProcess(base, workdir / "server.log", "--num-versions", "1")
    rows = []
    prompt = list(range(1, 12)) + [eos]
    try:
        server.wait_for_version(1, timeout=900)
        pid = server.process.pid
        with Client(server.target, MODEL_NAME, timeout=600, max_positions=max_positions, eos_token_id=eos) as client:
            answer = client.generate([prompt], max_new_tokens=4).sequences[0].tolist()
            rows.append({"step": 0, **status(pid)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            for version in range(2, rollovers + 2):
                started = time.perf_counter()
                scratch = base / f".incoming-{version}"  # not a number: the server ignores it
                shutil.copytree(base / str(version - 1), scratch)
                os.rename(scratch, base / str(version))
                server.wait_for_version(version, timeout=900)
                deadline = time.monotonic() + 300
                while f"unloaded version {version - 1} " not in server.log():
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"version {version - 1} was not unloaded:\n{server.log()}")
                    time.sleep(0.2)
                shutil.rmtree(base / str(version - 1))
                out = client.generate([prompt], max_new_tokens=4)
                if out.model_spec.version != version or out.sequences[0].tolist() != answer:
                    raise RuntimeError(f"version {version} answered {out.model_spec.version}: {out.sequences}")
                rows.append({"step": version - 1, "seconds": time.perf_counter() - started, **status(pid)})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        server.terminate()
    return rows


# ---- the parent: export once, run each variant in its own process, print the table --------------


def export_model(tiny: bool, workdir: Path):
    from tfdialogpt.serving.export import export

    if tiny:
        from serving_utils import CAP, WARMUP_LENGTHS, make_model, make_tokenizer

        model, tokenizer = make_model(0), make_tokenizer(workdir / "tokenizer")
        cap, lengths = CAP, WARMUP_LENGTHS
    else:
        import keras

        from tfdialogpt import DialoGPT, DialoGPTConfig

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from serve import default_tokenizer

        keras.utils.set_random_seed(0)
        model = DialoGPT(DialoGPTConfig.preset("small"))
        tokenizer = default_tokenizer(argparse.Namespace(tokenizer=None, model=None))
        cap, lengths = 16, (16, 32)
    started = time.perf_counter()
    result = export(
        model, workdir / "export", max_new_tokens_cap=cap, warmup_prompt_lengths=lengths, tokenizer=tokenizer
    )
    return result, model.config, time.perf_counter() - started


def run_child(variant: str, path: str, rollovers: int) -> list[dict]:
    env = dict(os.environ, **VARIANTS[variant])
    proc = subprocess.run(
        [sys.executable, __file__, "--child", variant, "--saved-model", path, "--rollovers", str(rollovers)],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"variant {variant} failed:\n{proc.stderr[-4000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny model instead of the small shape")
    parser.add_argument("--rollovers", type=int, default=6)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--child", choices=[v for v in VARIANTS if v != "server"], help=argparse.SUPPRESS)
    parser.add_argument("--saved-model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.saved_model, args.rollovers)
        return 0
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")

    from tfdialogpt._quiet import import_tensorflow

    tf = import_tensorflow()

    import tfdialogpt

    workdir = Path(tempfile.mkdtemp(prefix="tfdialogpt-rollover-bench-"))
    try:
        result, config, export_seconds = export_model(args.tiny, workdir)
        size = sum(f.stat().st_size for f in Path(result.path).rglob("*") if f.is_file()) / 1e6
        results = {}
        for variant in variants:
            started = time.perf_counter()
            try:
                if variant == "server":
                    rows = server_rollovers(
                        Path(result.path),
                        workdir / "server",
                        args.rollovers,
                        config.vocab_size,
                        config.eos_token_id,
                        config.max_positions,
                    )
                else:
                    rows = run_child(variant, result.path, args.rollovers)
            except Exception as err:  # report it, and measure the other variants
                print(f"# {variant} failed: {err}", file=sys.stderr, flush=True)
                rows = []
            results[variant] = rows
            print(f"# {variant}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        print_table(args, results, config, size, export_seconds, tf.__version__, tfdialogpt.__file__)
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def print_table(args, results, config, size_mb, export_seconds, tf_version, package) -> None:
    shape = "tests' tiny model" if args.tiny else "DialoGPT-small shape, random weights"
    print(
        f"\n## Version rollover memory ({datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"TensorFlow {tf_version}, {platform.libc_ver()[0]} {platform.libc_ver()[1]})\n"
    )
    print(
        f"model: {shape} ({config.num_parameters:,} parameters); export {size_mb:.0f} MB on disk, "
        f"written in {export_seconds:.0f} s; tfdialogpt from {Path(package).parent.parent}\n"
    )
    steps = args.rollovers
    print(
        "| variant | "
        + " | ".join(["RSS v1 MB"] + [f"after {i}" for i in range(1, steps + 1)])
        + " | MB per rollover (all) | MB per rollover (last 3) | peak MB |"
    )
    print("|---|" + "---:|" * (steps + 4))
    for variant, rows in results.items():
        by_step = {r["step"]: r for r in rows if r["step"] != "start"}
        rss = [by_step[i]["VmRSS"] for i in range(steps + 1) if i in by_step]
        if len(rss) < steps + 1:
            print(f"| `{variant}` | failed: see the log |")
            continue
        per_all = (rss[-1] - rss[0]) / steps
        last = min(3, steps)
        per_last = (rss[-1] - rss[-1 - last]) / last
        peak = max(r["VmHWM"] for r in rows)
        cells = " | ".join(f"{x:.0f}" for x in rss)
        print(f"| `{variant}` | {cells} | {per_all:+.0f} | {per_last:+.0f} | {peak:.0f} |")
    seconds = {v: [r["seconds"] for r in rows if "seconds" in r] for v, rows in results.items()}
    print(
        "\nseconds per rollover (median): "
        + ", ".join(f"{v} {sorted(s)[len(s) // 2]:.1f}" for v, s in seconds.items() if s)
    )
    gradients = {r.get("gradients") for rows in results.values() for r in rows if r.get("gradients")}
    if gradients:
        print(f"custom-gradient registry entries added per load: {', '.join(map(str, sorted(gradients)))}")


if __name__ == "__main__":
    from tfdialogpt._quiet import import_tensorflow

    import_tensorflow()  # first, so no later import prints TensorFlow's native start-up lines
    sys.exit(main())
