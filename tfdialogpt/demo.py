"""The end-to-end demo (`make demo`, `tfdialogpt demo`): export the embedded default model,
serve it with `tfdialogpt serve`, hold a scripted conversation through the gRPC client (text
to the export's chat signature: the tokenizer runs in the served graph), print the replies with
their latency, ask once more over the REST API as curl would, and stop the server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_TURNS = ("Hello", "How are you?", "What is your name?", "Do you like music?", "Good night")
MODEL_NAME = "dialogpt"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rest_reply(port: int, text: str, out) -> None:
    """The same server over TF Serving's REST API, as curl would call it: no signature named
    (serving_default, the chat with the export's defaults), only the turns."""
    import json
    import urllib.request

    url = f"http://127.0.0.1:{port}/v1/models/{MODEL_NAME}:predict"
    body = json.dumps({"inputs": {"turns": [[text]]}}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        reply = json.loads(response.read())["outputs"]["reply"][0]
    print(
        f"REST: POST {url} {body.decode()}\n  -> reply {reply!r}    [{(time.perf_counter() - started) * 1000:.0f} ms]",
        file=out,
    )


def run_demo(workdir: str | None = None, turns=None, port: int = 0, out=sys.stdout) -> int:
    """Runs the demo; returns 0 when every scripted turn got a reply over gRPC."""
    from tfdialogpt import DialoGPT
    from tfdialogpt.chat import ServedChat
    from tfdialogpt.serving.client import Client
    from tfdialogpt.serving.export import export

    turns = list(turns or DEFAULT_TURNS)
    with tempfile.TemporaryDirectory(prefix="tfdialogpt-demo-") as tmp:
        base_path = Path(workdir or tmp) / MODEL_NAME
        started = time.perf_counter()
        model = DialoGPT.from_pretrained("default")
        result = export(model, base_path, model_name=MODEL_NAME)
        print(f"exported the default model to {result.path} in {time.perf_counter() - started:.1f} s", file=out)

        port, rest_port = port or _free_port(), _free_port()
        command = [
            sys.executable,
            "-m",
            "tfdialogpt",
            "serve",
            "--model-base-path",
            str(base_path),
            "--model-name",
            MODEL_NAME,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--rest-api-port",
            str(rest_port),
        ]
        log_path = Path(workdir or tmp) / "server.log"
        with open(log_path, "w") as log:
            server = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
            )
        try:
            with Client(f"127.0.0.1:{port}", MODEL_NAME, timeout=60) as client:
                started = time.perf_counter()
                version = client.wait_until_available(timeout=180)
                print(
                    f"tfdialogpt serve is up on 127.0.0.1:{port}, model {MODEL_NAME!r} version {version} "
                    f"({time.perf_counter() - started:.1f} s)",
                    file=out,
                )
                chat = ServedChat(client, max_new_tokens=32)  # text over gRPC: the export tokenizes
                for text in turns:
                    started = time.perf_counter()
                    reply = chat.reply(text)
                    print(
                        f"you> {text}\nbot> {reply}    [{(time.perf_counter() - started) * 1000:.0f} ms]",
                        file=out,
                        flush=True,
                    )
            _rest_reply(rest_port, turns[0], out)
        except BaseException:
            print(f"the demo failed; server log ({log_path}):\n{log_path.read_text()[-4000:]}", file=sys.stderr)
            raise
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                code = server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                code = server.wait()
        print(f"server stopped (exit status {code})", file=out)
    return 0 if code == 0 else 1
