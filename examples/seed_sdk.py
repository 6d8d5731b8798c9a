"""The seed article's 3-layer network (32 → 64 → 32 → 1, MSELoss, Adam lr=1e-3, 100 epochs on 128 randn
samples) trained end to end through the Python SDK: create, wait with a progress bar, metrics, predict.

    python examples/seed_sdk.py [--url http://127.0.0.1:8000] [--api-key KEY]
"""

from __future__ import annotations

import argparse
import logging

from trainserve import Adam, Client, Linear, MSELoss, ReLU, Spec, Synthetic, Training

log = logging.getLogger(__name__)


def seed_spec() -> Spec:
    """The article's model, written with the SDK's builders; it renders to service.spec.SEED_EXAMPLE."""
    return Spec(
        name="seed-mlp",
        layers=[Linear(32, 64), ReLU(), Linear(32), ReLU(), Linear(1)],
        loss=MSELoss(),
        optimizer=Adam(lr=0.001),
        training=Training(epochs=100, batch_size=128, seed=0, log_every_steps=1),
        data=Synthetic(kind="randn", n_samples=128, n_features=32, n_targets=1),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()

    with Client(args.url, args.api_key) as client:
        report = client.jobs.validate(seed_spec())
        print(f"{report.total_params} parameters, {report.total_steps} optimizer steps")

        job = client.jobs.create(seed_spec())
        job = client.jobs.wait(job.id, progress=True, poll_interval=0.5)
        print(f"job {job.id}: {job.status}")
        if job.status != "succeeded":
            raise SystemExit(1)

        losses = client.jobs.metrics(job.id, names=["train_loss"])
        print(f"train_loss: {losses[0].value:.4f} at step {losses[0].step} → {losses[-1].value:.4f} at step {losses[-1].step}")

        prediction = client.predict(job.id, [[0.1] * 32, [-0.1] * 32])
        print(f"predictions from checkpoint {prediction.checkpoint_id}: {prediction.predictions}")


if __name__ == "__main__":
    main()
