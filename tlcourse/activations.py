"""What a network computes inside (lesson 01): activations of named layers, the patches a channel
likes best, an explorer (hooks: :mod:`tlcourse.models.hooks`; figures: :mod:`tlcourse.plots`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import cache
from typing import Any

import pandas as pd
import torch
from matplotlib.figure import Figure
from PIL import Image

from tlcourse import plots
from tlcourse.models import hooks, preprocess

ImageLike = Image.Image | torch.Tensor


def to_batch(model: torch.nn.Module, image: ImageLike) -> torch.Tensor:
    """A batch the model accepts: a PIL image is preprocessed as the model was trained
    (:func:`tlcourse.models.preprocess`); a tensor ``(3, H, W)`` gets a batch dimension."""
    if isinstance(image, Image.Image):
        return preprocess(model, image)
    if isinstance(image, torch.Tensor) and image.dim() in (3, 4):
        return image.unsqueeze(0) if image.dim() == 3 else image
    raise TypeError(f"expected a PIL image or a tensor (3, H, W) / (N, 3, H, W), got "
                    f"{type(image).__name__}{tuple(getattr(image, 'shape', ()))}.")


@torch.no_grad()
def activations(model: torch.nn.Module, image: ImageLike,
                layers: str | Sequence[str]) -> dict[str, torch.Tensor]:
    """One forward pass in eval mode (then the model's mode restored): the named layers' outputs, in order."""
    names = hooks.as_names(layers)
    with hooks.eval_mode(model), hooks.capture(model, names) as store:
        model(to_batch(model, image))
    if missing := [n for n in names if n not in store]:
        raise RuntimeError(f"layers {missing} did not run in the forward pass (or returned no "
                           "tensor); pick layers that the model calls, such as its blocks.")
    return {n: store[n] for n in names}


def similarity(model: torch.nn.Module, images: Mapping[str, ImageLike], layer: str) -> pd.DataFrame:
    """Cosine similarity of the images' outputs of ``layer`` (flattened), image by image: near 1
    everywhere, the layer describes every image alike and a classifier on it could not tell them apart."""
    if len(images) < 2:
        raise ValueError("similarity compares images: pass at least two, as {'name': image}.")
    batches = [to_batch(model, img) for img in images.values()]
    if len({b.shape for b in batches}) == 1:  # one forward pass for all images
        batches = [torch.cat(batches)]
    outputs = torch.cat([activations(model, b, layer)[layer].flatten(1) for b in batches])
    unit = torch.nn.functional.normalize(outputs.float(), dim=1)
    return pd.DataFrame((unit @ unit.T).numpy(), index=list(images), columns=list(images))


def first_conv(model: torch.nn.Module) -> tuple[str, torch.nn.Conv2d]:
    """The first 2-D convolution that sees the image (3 input channels), with its name."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d) and module.in_channels == 3:
            return name, module
    raise ValueError(f"{type(model).__name__} has no Conv2d with 3 input channels; "
                     "pass the filters you want to show to plots.plot_filters yourself.")


def unnormalise(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Undo the model's input normalisation: ``(N, 3, H, W)`` pixels in [0, 1] again."""
    import timm

    config = timm.data.resolve_data_config({}, model=model)
    mean, std = (torch.tensor(config[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    return (batch * std + mean).clamp(0, 1)


class _Reached(Exception):
    """Raised by a hook to end a forward pass once the wanted layer has run."""


def _stop(module, inputs, output):
    raise _Reached


@torch.no_grad()
def batch_activations(model: torch.nn.Module, batch: torch.Tensor, layer: str,
                      chunk: int = 32) -> torch.Tensor:
    """Outputs ``(N, C, H, W)`` of ``layer`` for a preprocessed batch, in eval mode (then restored),
    ``chunk`` images at a time; each pass stops once ``layer`` has run, so the layers above cost nothing."""
    module = hooks.named_layers(model, [layer])[layer]
    parts = []
    # the stop hook, registered second, runs after capture's; leaving the block removes both
    with hooks.eval_mode(model), hooks.capture(model, layer) as store, module.register_forward_hook(_stop):
        for i in range(0, len(batch), chunk):
            with suppress(_Reached):
                model(batch[i:i + chunk])
            parts.append(store.pop(layer))
    return torch.cat(parts)


def strongest(maps: torch.Tensor, channel: int, k: int) -> list[tuple[int, int, int]]:
    """Where ``channel`` responds most in maps ``(N, C, H, W)``: ``(image index, row, column)`` of the
    ``k`` images with the largest peaks, strongest first, each image once, at its strongest position."""
    if maps.dim() != 4 or not 0 <= channel < maps.shape[1]:
        raise ValueError(f"expected maps (N, C, H, W) and a channel below C; got {tuple(maps.shape)} "
                         f"and channel {channel}.")
    peaks, where = maps[:, channel].flatten(1).max(dim=1)
    width = maps.shape[-1]
    return [(i, int(where[i]) // width, int(where[i]) % width)
            for i in peaks.argsort(descending=True)[:k].tolist()]


def patch_box(row: int, col: int, grid: Sequence[int], image: Sequence[int],
              patch: int) -> tuple[int, int, int, int]:
    """Pixel box ``(top, left, bottom, right)`` of side ``patch`` centred on grid cell ``(row, col)``
    of a map of size ``grid`` over an input of size ``image``; moved, not cut, to stay inside it."""
    def start(index: int, cells: int, pixels: int) -> int:
        centre = (index + 0.5) * pixels / cells
        return max(0, min(int(round(centre - patch / 2)), pixels - patch))

    top, left = start(row, grid[0], image[0]), start(col, grid[1], image[1])
    return top, left, top + patch, left + patch


def selective_channels(maps: torch.Tensor, n: int) -> list[int]:
    """The ``n`` channels of maps ``(N, C, H, W)`` whose peak response differs most from image to
    image (largest standard deviation of the per-image peaks): they fire on some photos only."""
    return maps.flatten(2).amax(dim=2).std(dim=0).topk(min(n, maps.shape[1])).indices.tolist()


def top_patches(model: torch.nn.Module, batch: torch.Tensor, layer: str, channels: Sequence[int],
                k: int = 6, patch: int | None = None,
                maps: torch.Tensor | None = None) -> dict[int, list[torch.Tensor]]:
    """For each channel, the ``k`` patches ``(3, patch, patch)`` in [0, 1] of the preprocessed ``batch``
    that excite it most, one per image, centred on its peak (:func:`strongest`); ``patch`` defaults
    to three grid cells; pass ``maps`` (:func:`batch_activations`) to reuse them."""
    maps = batch_activations(model, batch, layer) if maps is None else maps
    pixels = unnormalise(model, batch)
    grid, size = maps.shape[-2:], pixels.shape[-2:]
    patch = patch or int(3 * size[0] / grid[0])
    boxes = {c: [(i, patch_box(row, col, grid, size, patch)) for i, row, col in strongest(maps, c, k)]
             for c in map(int, channels)}
    return {c: [pixels[i, :, top:bottom, left:right] for i, (top, left, bottom, right) in found]
            for c, found in boxes.items()}


@dataclass
class Explorer:
    """The explorer's widget and a static figure of its default selection."""

    widget: Any
    figure: Figure


def explore(model: torch.nn.Module, images: Mapping[str, ImageLike], layers: Sequence[str],
            n_channels: int = 8) -> Explorer:
    """An ipywidgets explorer of feature maps (choose image, layer and channels; each image runs
    once) and a static figure of its default selection, for where widgets are not rendered."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    if not images:
        raise ValueError("explore needs at least one image: pass a dict such as {'coffee': photo}.")
    layers = hooks.as_names(layers)
    hooks.named_layers(model, layers)  # fail early, with the list of valid names

    @cache
    def maps_of(image: str) -> dict[str, torch.Tensor]:
        return activations(model, images[image], layers)

    def figure(image: str, layer: str, order: str, first: int, count: int, note: str = "") -> Figure:
        maps = maps_of(image)[layer][0]
        ranked = (plots.top_channels(maps, maps.shape[0]) if order == "most varied first"
                  else list(range(maps.shape[0])))
        chosen = ranked[min(first, len(ranked) - 1):][:count]
        return plots.plot_feature_maps(
            maps, channels=chosen,
            title=f"{image}: layer {layer!r}, {len(chosen)} of {maps.shape[0]} channels ({order}){note}")

    def draw(image: str, layer: str, order: str, first_channel: int, count: int) -> None:
        display(fig := figure(image, layer, order, first_channel, count))
        plt.close(fig)

    first_image = next(iter(images))
    widest = max(maps.shape[1] for maps in maps_of(first_image).values())
    widget = widgets.interactive(
        draw,
        image=widgets.Dropdown(options=list(images), description="image"),
        layer=widgets.Dropdown(options=layers, description="layer"),
        order=widgets.ToggleButtons(options=["most varied first", "channel index"], description="order"),
        first_channel=widgets.IntSlider(value=0, min=0, max=widest - 1, description="first"),
        count=widgets.IntSlider(value=n_channels, min=1, max=32, description="how many"),
    )
    static = figure(first_image, layers[0], "most varied first", 0, n_channels,
                    note="\nstatic view of the explorer's default selection")
    return Explorer(widget=widget, figure=static)
