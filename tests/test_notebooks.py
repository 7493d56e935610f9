"""The notebooks run top to bottom on the embedded default model, in a kernel of this venv.

Each notebook is executed by nbclient; a cell that raises fails the test with its traceback.
Cells whose output is checked carry a tag (`metadata.tags`), so the checks survive edits to
the other cells.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL_NAME = "tfdialogpt-venv"
CELL_TIMEOUT = 180  # seconds per cell; whole notebooks take well under a minute

# Multi-process runs: a kernel (and a model server) per notebook.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("kernel_dirs")]


@pytest.fixture(scope="module")
def kernel_dirs(tmp_path_factory):
    """A kernelspec that runs this interpreter (the venv's python), in a temporary JUPYTER_PATH.

    The stock `python3` spec says `python`, which jupyter_client resolves to its own
    interpreter; naming the executable here makes that explicit whatever else is installed.
    """
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "tfdialogpt (test venv)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(root))
        patch.setenv("JUPYTER_RUNTIME_DIR", str(root / "runtime"))
        patch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
        yield root


def test_kernelspec_runs_this_interpreter():
    from jupyter_client.kernelspec import KernelSpecManager

    assert KernelSpecManager().get_kernel_spec(KERNEL_NAME).argv[0] == sys.executable


def run_notebook(name: str, workdir: Path) -> nbformat.NotebookNode:
    """Executes `notebooks/<name>` in `workdir`; its temporary files go to `workdir/tmp`."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert not any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), (
        f"{name} is committed with outputs; clear them"
    )
    temp = workdir / "tmp"
    temp.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(temp))  # read by the kernel's `tempfile`
        client = NotebookClient(
            nb, kernel_name=KERNEL_NAME, timeout=CELL_TIMEOUT, resources={"metadata": {"path": str(workdir)}}
        )
        try:
            client.execute()
        finally:
            stop_processes_using(temp)
    errors = [out for cell in nb.cells for out in cell.get("outputs", []) if out.output_type == "error"]
    assert not errors, f"{name}: {errors}"
    return nb


def stop_processes_using(directory: Path) -> None:
    """Ends processes (by pid) whose command line names `directory`: a model server the
    notebook started and could not stop because a cell failed. Only this test's notebook
    kernel wrote into `directory`."""
    import psutil

    marker = str(directory) + os.sep
    leftovers = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if any(marker in part for part in process.info["cmdline"] or ()):
            leftovers.append(process)
            with contextlib.suppress(psutil.NoSuchProcess):
                process.terminate()
    _, alive = psutil.wait_procs(leftovers, timeout=15)
    for process in alive:
        process.kill()


def tagged(nb: nbformat.NotebookNode, tag: str):
    """The value a tagged cell displayed (its last expression's repr, read back)."""
    cells = [cell for cell in nb.cells if tag in cell.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    results = [out for out in cells[0].outputs if out.output_type == "execute_result"]
    assert results, f"cell {tag!r} displayed no value"
    return ast.literal_eval(results[-1].data["text/plain"])


def test_quickstart(tmp_path):
    nb = run_notebook("quickstart.ipynb", tmp_path)
    first = tagged(nb, "first-reply")
    assert isinstance(first, str) and first.strip()
    history = tagged(nb, "history")
    assert len(history) == 4 and history[0] == "Hello" and history[1] == first and history[2] == "How are you?"
    sampled, repeated = tagged(nb, "sampled")
    assert isinstance(sampled, str) and repeated is True  # same seed, same reply
    batch = tagged(nb, "batch")
    assert len(batch) == 3 and all(isinstance(r, str) and r.strip() for r in batch)


def test_finetuning(tmp_path):
    nb = run_notebook("finetuning.ipynb", tmp_path)
    # Greedy decoding reproduces the trained replies, also with a turn of history.
    assert tagged(nb, "finetuned-reply") == "Teal, like the sea at dawn."
    assert tagged(nb, "finetuned-dialogue") == ("Green tea, every morning.", "It is calm and bright.")
    before = tagged(nb, "perplexity-before")
    after = tagged(nb, "perplexity-after")
    assert after["perplexity"] < 2.0 and before > 10 * after["perplexity"]
    assert after["bleu2"] > 90


def test_export_and_serve(tmp_path):
    nb = run_notebook("export_and_serve.ipynb", tmp_path)
    served, local, equal = tagged(nb, "served-vs-local")
    assert served and served == local and equal is True
    assert all(isinstance(r, str) and r.strip() for r in tagged(nb, "served-chat"))
    assert tagged(nb, "server-exit") == 0  # SIGTERM: a clean shutdown


def test_mmi(tmp_path):
    nb = run_notebook("mmi.ipynb", tmp_path)
    side_by_side = tagged(nb, "greedy-vs-mmi")
    assert len(side_by_side) == 4 and all(greedy and mmi for _, greedy, mmi in side_by_side)
    assert any(greedy != mmi for _, greedy, mmi in side_by_side)  # the reranking changes something
    picked, ranked = tagged(nb, "ranked")
    assert len(ranked) == 8 and picked == ranked[0][1]  # the chat's pick is the best-scored candidate
    greedy, reranked = tagged(nb, "metrics")
    assert set(greedy) == set(reranked) == {"bleu2", "dist1", "dist2", "avg_length"}
