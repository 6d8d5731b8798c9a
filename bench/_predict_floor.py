"""Peer (a) of ``bench.predict``: the floor of the stack, a bare FastAPI route on uvicorn running the forward pass.

No auth, no database, no validation beyond what JSON decoding does: the least a FastAPI + uvicorn service
can do per request for the same model and the same answer. Run as
``python -m bench._predict_floor CHECKPOINT_FILE CHECKPOINT_ID PORT``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import uvicorn
from fastapi import FastAPI, Request, Response

from bench._predict_model import Classifier


def create_app(checkpoint: Path, checkpoint_id: str) -> FastAPI:
    classifier = Classifier(checkpoint)
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        body = orjson.loads(await request.body())
        # Inline on the event loop: on 2 cores a thread hop costs more than it overlaps.
        answer = {"job_id": body["job_id"], "checkpoint_id": checkpoint_id, **classifier.predict(body["inputs"])}
        return Response(orjson.dumps(answer), media_type="application/json")

    return app


def main() -> None:
    checkpoint, checkpoint_id, port = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    uvicorn.run(create_app(checkpoint, checkpoint_id), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
