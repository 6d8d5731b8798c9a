"""Spec → ``nn.Sequential`` of PyTorch's own modules, seeded so that it equals, weight for weight, the
hand-written ``torch.manual_seed(seed); nn.Sequential(...)``."""

from __future__ import annotations

import logging

import torch
from torch import nn

from service.nets.report import Issue, ShapeError
from service.nets.shapes import walk_layers
from service.spec import Conv1d, Conv2d, InitName, JobSpec, Linear

log = logging.getLogger(__name__)


def _init_module(module: nn.Module, init: InitName) -> None:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return
    if init == "kaiming_normal":
        nn.init.kaiming_normal_(weight, nonlinearity="relu")
    elif init == "kaiming_uniform":
        nn.init.kaiming_uniform_(weight, nonlinearity="relu")
    elif init == "xavier_normal":
        nn.init.xavier_normal_(weight)
    elif init == "xavier_uniform":
        nn.init.xavier_uniform_(weight)
    bias = getattr(module, "bias", None)
    if isinstance(bias, torch.Tensor):
        nn.init.zeros_(bias)


def build_model(spec: JobSpec, input_shape: tuple[int, ...]) -> nn.Sequential:
    """The spec's layers as an ``nn.Sequential`` of PyTorch modules for samples of ``input_shape`` (no batch dim).

    Raises ``ShapeError`` when the stack does not fit the input (``check_spec`` reports the same problems).
    """
    walk = walk_layers(spec.model.layers, tuple(input_shape))
    if walk.errors or walk.output_shape is None:
        raise ShapeError(walk.errors or [Issue("model.layers", "the layers do not fit the input shape")])
    # Seed right before construction and draw nothing else, so the weights equal a hand-written
    # `torch.manual_seed(seed); nn.Sequential(...)`; custom inits run afterwards, as `model.apply(...)` would.
    torch.manual_seed(spec.training.seed)
    modules = [getattr(nn, layer.type)(**kwargs) for layer, kwargs in zip(spec.model.layers, walk.kwargs)]
    model = nn.Sequential(*modules)
    for layer, module in zip(spec.model.layers, modules):
        if isinstance(layer, (Linear, Conv1d, Conv2d)):
            init = layer.init if layer.init is not None else spec.model.init
            if init != "default":
                _init_module(module, init)
    log.debug("nets.built layers=%d seed=%d", len(modules), spec.training.seed)
    return model

