"""Forward hooks: run an input through any PyTorch model and report what each layer hands on.  Layers
go by their ``model.named_modules()`` names (``"blocks.3"``, ``"layer2"``); hooks last for one ``with``
block, and a blank input runs in eval mode with the training mode restored."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Any

import pandas as pd
import torch


def layer_names(model: torch.nn.Module, max_depth: int | None = None) -> list[str]:
    """Names of the model's sub-modules in definition order, without the root ``""``; ``max_depth=1``
    keeps top-level names (``"blocks"``), ``2`` also their children (``"blocks.3"``), ``None`` all."""
    return [n for n, _ in model.named_modules() if n and (max_depth is None or n.count(".") < max_depth)]


def named_layers(model: torch.nn.Module, layers: Sequence[str]) -> dict[str, torch.nn.Module]:
    """The modules called ``layers``; a ValueError that lists valid names for a wrong one."""
    found = dict(model.named_modules())
    for name in layers:
        if not isinstance(name, str) or not name or name not in found:
            close = difflib.get_close_matches(str(name), layer_names(model), n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(
                f"{type(model).__name__} has no layer named {name!r}.{hint} Valid names include "
                f"{', '.join(map(repr, layer_names(model, max_depth=2)[:8]))}, ...; "
                "hooks.layer_names(model) lists them all.")
    return {name: found[name] for name in layers}


def as_names(layers: str | Sequence[str]) -> list[str]:
    """One layer name or several, as a list."""
    return [layers] if isinstance(layers, str) else list(layers)


def _record(store: dict, name: str, module: torch.nn.Module, inputs: Any, output: Any) -> None:
    """Forward hook: keep the module's output tensor (the first of a tuple or list) as ``store[name]``."""
    outputs = output if isinstance(output, (tuple, list)) else [output]
    tensor = next((o for o in outputs if isinstance(o, torch.Tensor)), None)
    if tensor is not None:
        store[name] = tensor.detach().cpu()


@contextmanager
def capture(model: torch.nn.Module, layers: str | Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the named layers' outputs (detached, on the CPU; the last call wins) during the forward
    passes inside the block, in the dict it yields; the hooks go when the block ends, even by an error::

        with capture(model, ["blocks.1", "blocks.5"]) as acts:
            model(x)
    """
    store: dict[str, torch.Tensor] = {}
    with ExitStack() as hooks:  # each RemovableHandle removes its hook on exit
        for name, module in named_layers(model, as_names(layers)).items():
            hooks.enter_context(module.register_forward_hook(partial(_record, store, name)))
        yield store


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode for the block (BatchNorm statistics untouched), its training mode put back."""
    was_training = model.training
    try:
        yield model.eval()
    finally:
        model.train(was_training)


def layer_table(model: torch.nn.Module, input_size: Sequence[int] = (3, 224, 224),
                max_depth: int | None = 2) -> pd.DataFrame:
    """One row per layer (``max_depth`` as in :func:`layer_names`): ``name``, ``type``, ``params``
    (with sub-layers) and ``output_shape`` for one ``input_size`` image of zeros (None if it does not run)."""
    names = layer_names(model, max_depth)
    with capture(model, names) as store, eval_mode(model), torch.no_grad():
        model(torch.zeros(1, *input_size))
    rows = [{"name": n, "type": type(m).__name__,
             "output_shape": tuple(store[n].shape[1:]) if n in store else None,
             "params": sum(p.numel() for p in m.parameters())} for n, m in named_layers(model, names).items()]
    table = pd.DataFrame(rows, columns=["name", "type", "output_shape", "params"])
    table.attrs["input_size"] = tuple(input_size)
    return table


def body_output_shape(body: torch.nn.Module, image_size: int) -> tuple[int, int, int]:
    """(channels, height, width) of what ``body`` returns for one ``image_size`` image, found with
    one blank image in eval mode (BatchNorm statistics untouched, the training mode restored)."""
    with eval_mode(body), torch.no_grad():
        out = body(torch.zeros(1, 3, image_size, image_size, device=next(body.parameters()).device))
    if out.ndim != 4:
        raise ValueError(f"Expected the body to return a feature map (batch, channels, height, width), "
                         f"got shape {tuple(out.shape)}.")
    return tuple(int(v) for v in out.shape[1:])
