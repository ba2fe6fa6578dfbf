"""The bare baseline of ``serve_ingress``'s model part: FastAPI + ONNX Runtime, no Ray.

    BENCH_ONNX_PATH=/path/model.onnx uvicorn bench._serve_ingress_apps:app --port N

What a user would hand-roll around the very file a replica serves (downloaded from the
registry): one process, ONNX Runtime with one thread (like one replica with 1 CPU), rows in
as ``{"instances": [[...]]}``, class and probabilities out, as our /predict answers.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request


def _session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


app = FastAPI()
session = _session(os.environ["BENCH_ONNX_PATH"])
input_name = session.get_inputs()[0].name


@app.post("/predict")
async def predict(request: Request) -> dict:
    rows = np.asarray((await request.json())["instances"], dtype=np.float32)
    probs = session.run(None, {input_name: rows})[0]
    return {
        "predictions": [
            {"class": int(p.argmax()), "probabilities": [float(v) for v in p]} for p in probs
        ]
    }
