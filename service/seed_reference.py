"""The seed article's 3-layer network and training loop, exactly as the article writes them.

The reference trainserve stands on: fit() must reproduce these losses bit for bit (tests), and the benchmarks
time this loop as the hand-written baseline. Nothing in the service calls it.
"""

from __future__ import annotations

import torch
from torch import nn


def seed_net(features: int = 32, outputs: int = 1) -> nn.Sequential:
    """The article's network, seeded as `training.seed: 0` seeds a job's model."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, outputs))


def hand_written_losses(x: torch.Tensor, y: torch.Tensor, steps: int = 100) -> tuple[list[float], nn.Module]:
    """The seed article's section 4, literally: full batch, MSELoss, Adam(lr=1e-3)."""
    model = seed_net(x.shape[1], y.shape[1])
    criterion = nn.MSELoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        pred = model(x)
        loss = criterion(pred, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, model


def seed_reference_losses(seed: int = 0) -> list[float]:
    """The article's loop on the data `synthetic/randn` documents (128 x 32, seeded)."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(128, 32, generator=g), torch.randn(128, 1, generator=g)
    return hand_written_losses(x, y)[0]
