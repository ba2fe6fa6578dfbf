"""What a user would hand-roll: one uvicorn process with FastAPI, no Ray.

    BENCH_MODE=noop|model BENCH_MODEL_URI=models:/... MLFLOW_TRACKING_URI=... \
        uvicorn bench._bare_server:app --port N

model mode serves the registered float32 model with torch (mlflow.pytorch.load_model, one
thread, like one Serve replica with 1 CPU).
"""

from __future__ import annotations

import os

import numpy as np
from fastapi import FastAPI, Request

app = FastAPI()
MODE = os.environ.get("BENCH_MODE", "noop")

if MODE == "model":
    import mlflow.pytorch
    import torch

    torch.set_num_threads(1)
    model = mlflow.pytorch.load_model(os.environ["BENCH_MODEL_URI"])

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        rows = np.asarray((await request.json())["instances"], dtype=np.float32)
        with torch.inference_mode():
            probs = model(torch.from_numpy(rows)).numpy()
        return {"predictions": [{"class": int(p.argmax())} for p in probs]}

else:

    @app.post("/predict")
    async def noop() -> dict:
        return {"ok": True}
