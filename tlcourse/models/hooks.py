"""Looking inside a network with forward hooks: one home for "run an input through it and
report what each layer hands on".

Layers are named as ``model.named_modules()`` names them (``"blocks.3"`` in timm's
EfficientNet, ``"layer2"`` in torchvision's ResNet), so the same code works for any PyTorch
model.  :func:`capture` registers forward hooks for the duration of a ``with`` block and
always removes them, also when the block raises, so a model never keeps hidden hooks that
slow it down or hold on to memory.  :func:`layer_table` (lessons 01 and 02) and
:func:`body_output_shape` (lesson 03) run one blank input in eval mode and put the model's
training mode back afterwards.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
import torch


def layer_names(model: torch.nn.Module, max_depth: int | None = None) -> list[str]:
    """Names of the model's sub-modules in forward-definition order (the root ``""`` left out).

    ``max_depth=1`` keeps top-level names only (``"blocks"``), ``2`` also their
    children (``"blocks.3"``), and so on; ``None`` keeps every name.
    """
    names = [name for name, _ in model.named_modules() if name]
    if max_depth is not None:
        names = [name for name in names if name.count(".") < max_depth]
    return names


def named_layers(model: torch.nn.Module, layers: Sequence[str]) -> dict[str, torch.nn.Module]:
    """The modules called ``layers``; a ValueError that lists valid names for a wrong one."""
    found = dict(model.named_modules())
    for name in layers:
        if not isinstance(name, str) or not name or name not in found:
            valid = layer_names(model)
            close = difflib.get_close_matches(str(name), valid, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(
                f"{type(model).__name__} has no layer named {name!r}.{hint} Valid names include "
                f"{', '.join(map(repr, layer_names(model, max_depth=2)[:8]))}, ...; "
                "hooks.layer_names(model) lists them all.")
    return {name: found[name] for name in layers}


def as_names(layers: str | Sequence[str]) -> list[str]:
    """One layer name or several, as a list."""
    return [layers] if isinstance(layers, str) else list(layers)


def _first_tensor(output: Any) -> torch.Tensor | None:
    """A module's output tensor (the first one when it returns a tuple or list)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((o for o in output if isinstance(o, torch.Tensor)), None)
    return None


@contextmanager
def capture(model: torch.nn.Module, layers: str | Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of the named layers during the forward passes inside the block.

    Yields a dict that fills up as the model runs: ``name -> output`` (detached, on
    the CPU; the last call wins when a layer runs more than once).  The hooks are
    removed when the block ends, normally or by an exception::

        with capture(model, ["blocks.1", "blocks.5"]) as acts:
            model(x)
        acts["blocks.1"].shape
    """
    modules = named_layers(model, as_names(layers))
    store: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name: str):
        def hook(module, inputs, output):
            tensor = _first_tensor(output)
            if tensor is not None:
                store[name] = tensor.detach().cpu()
        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(hook_for(name)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def layer_table(model: torch.nn.Module, input_size: Sequence[int] = (3, 224, 224),
                max_depth: int | None = 2) -> pd.DataFrame:
    """One row per layer: ``name``, ``type``, ``output_shape`` (one image, no batch
    dimension) for an input of ``input_size``, and ``params`` (including sub-layers).

    Runs one forward pass on zeros with temporary hooks (removed afterwards).
    ``max_depth`` as in :func:`layer_names`; layers that do not run have no shape.
    """
    names = layer_names(model, max_depth)
    modules = named_layers(model, names)
    was_training = model.training
    model.eval()
    try:
        with capture(model, names) as store:
            model(torch.zeros(1, *input_size))
    finally:
        model.train(was_training)
    rows = [{"name": n, "type": type(m).__name__,
             "output_shape": tuple(store[n].shape[1:]) if n in store else None,
             "params": _count(m)} for n, m in modules.items()]
    table = pd.DataFrame(rows, columns=["name", "type", "output_shape", "params"])
    table.attrs["input_size"] = tuple(input_size)
    return table


def body_output_shape(body: torch.nn.Module, image_size: int) -> tuple[int, int, int]:
    """(channels, height, width) of what ``body`` returns for one ``image_size`` image.

    Found with one forward pass of a dummy image in eval mode (so BatchNorm's running
    statistics are untouched); the body's training mode is restored afterwards.
    """
    was_training = body.training
    device = next(body.parameters()).device
    try:
        out = body.eval()(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        body.train(was_training)
    if out.ndim != 4:
        raise ValueError(f"Expected the body to return a feature map (batch, channels, height, width), "
                         f"got shape {tuple(out.shape)}.")
    return tuple(int(v) for v in out.shape[1:])
