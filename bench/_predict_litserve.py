"""Peer (b) of ``bench.predict``: LitServe serving the same checkpoint with the same answer.

LitServe as its documentation sets it up (one API server process, one inference worker, its default
queue), on the CPU. Run as ``python -m bench._predict_litserve CHECKPOINT_FILE CHECKPOINT_ID PORT``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import litserve as ls

from bench._predict_model import Classifier


class ClassifierAPI(ls.LitAPI):
    def __init__(self, checkpoint: Path, checkpoint_id: str) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.checkpoint_id = checkpoint_id

    def setup(self, device: str) -> None:
        self.classifier = Classifier(self.checkpoint)

    # Unannotated on purpose: LitServe turns these annotations into FastAPI's request and response models, and
    # its documented default (no annotation) reads the JSON body itself, as the other two servers do.
    def decode_request(self, request):
        return request

    def predict(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"job_id": request["job_id"], "checkpoint_id": self.checkpoint_id,
                **self.classifier.predict(request["inputs"])}

    def encode_response(self, output):
        return output


def main() -> None:
    checkpoint, checkpoint_id, port = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    server = ls.LitServer(ClassifierAPI(checkpoint, checkpoint_id), accelerator="cpu")
    # No client.py written into the working directory; warnings only, like the other two servers.
    server.run(host="127.0.0.1", port=port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
