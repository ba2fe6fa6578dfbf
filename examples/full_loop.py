"""The whole loop from a terminal's point of view: `orch run` trains, tunes, registers and
serves the pipeline; a client sends one prediction over HTTP; Ctrl-C stops the server.

    python examples/full_loop.py examples/digits.yaml
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml
from sklearn.datasets import load_digits


def main(spec_path: str) -> int:
    serve = yaml.safe_load(Path(spec_path).read_text())["serve"]
    endpoint = f"http://{serve.get('host', '127.0.0.1')}:{serve.get('port', 8000)}/{serve['name']}"
    orch = Path(sys.executable).parent / "orch"
    server = subprocess.Popen([str(orch), "run", spec_path], start_new_session=True)
    try:
        while server.poll() is None:
            try:
                if httpx.get(f"{endpoint}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        if server.poll() is not None:
            print(f"orch run exited with {server.returncode} before serving", file=sys.stderr)
            return server.returncode or 1
        image = load_digits().data[7]  # an 8x8 digit "7", as 64 raw pixel values
        reply = httpx.post(f"{endpoint}/predict", json={"instances": [image.tolist()]}, timeout=30)
        print(f"POST {endpoint}/predict -> {reply.status_code}")
        print(json.dumps(reply.json(), indent=2))
        return 0 if reply.status_code == 200 else 1
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)  # what Ctrl-C sends: a clean Serve shutdown
            server.wait(timeout=120)
        print(f"orch run exited with {server.returncode}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "examples/digits.yaml"))
