"""A classifier through the Python SDK: the builtin iris data set (4 features, 3 classes), a small MLP with
CrossEntropyLoss, trained with a validation split; then its metrics and a few predictions.

    python examples/classifier_sdk.py [--url http://127.0.0.1:8000] [--api-key KEY]
"""

from __future__ import annotations

import argparse
import logging

from trainserve import Adam, Builtin, Client, CrossEntropyLoss, Linear, ReLU, Spec, Training

log = logging.getLogger(__name__)

# One flower of each species (setosa, versicolor, virginica), in iris's column order:
# sepal length, sepal width, petal length, petal width (cm).
SAMPLES = [[5.1, 3.5, 1.4, 0.2], [6.4, 3.2, 4.5, 1.5], [6.3, 3.3, 6.0, 2.5]]


def iris_spec(epochs: int = 60) -> Spec:
    return Spec(
        name="iris-mlp",
        layers=[Linear(16), ReLU(), Linear(3)],  # in_features comes from the data
        loss=CrossEntropyLoss(),
        optimizer=Adam(lr=0.01),
        # normalize: z-scores from the training split, stored with the checkpoint and applied by /predict.
        training=Training(epochs=epochs, batch_size=16, seed=0, validation_split=0.2, normalize=True),
        data=Builtin("iris"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()

    with Client(args.url, args.api_key) as client:
        job = client.jobs.create(iris_spec(args.epochs))
        job = client.jobs.wait(job.id, progress=True, poll_interval=0.5)
        print(f"job {job.id}: {job.status}")
        if job.status != "succeeded":
            raise SystemExit(1)

        accuracy = client.jobs.metrics(job.id, names=["val_accuracy"])
        if accuracy:
            print(f"val_accuracy after epoch {accuracy[-1].epoch}: {accuracy[-1].value:.3f}")

        result = client.predict(job.id, SAMPLES)
        for row, label, probs in zip(SAMPLES, result.predictions, result.probabilities or [], strict=False):
            print(f"{row} → class {label} (p={max(probs):.2f})")


if __name__ == "__main__":
    main()
