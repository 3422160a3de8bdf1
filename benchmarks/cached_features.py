"""How much faster is an epoch on cached features than through the frozen network?

Trains the same linear head (Adam, cross-entropy) for one epoch in two ways on the
mode's training images: (1) images -> frozen pretrained body -> head, backprop
only into the head; (2) the body's stored features -> head.  Prints both times per
epoch (best of a few epochs, after a warm-up) and their ratio.  Images are decoded
into memory first, so file loading does not inflate (1); the gap is the body alone.

Run:  ``TLCOURSE_MODE=quick python benchmarks/cached_features.py``
(``--threads 1`` gives steadier numbers on a busy machine).
"""

from __future__ import annotations

import argparse
import platform

import pandas as pd
import torch

from tlcourse import data
from tlcourse.models import features
from tlcourse.settings import get_settings

SEED = 0


def measure(df: pd.DataFrame, image_size: int, batch_size: int, repeats: int = 2,
            device: str = "cpu", seed: int = SEED, max_images: int | None = None) -> features.EpochTimes:
    """Epoch times through the frozen pretrained body and on its features, for ``df``'s training images."""
    torch.manual_seed(seed)
    body, _ = features.backbone(pretrained=True)
    train = df[df["split"] == "train"]
    if max_images is not None and len(train) > max_images:
        train = train.sample(n=max_images, random_state=seed)
    images, labels = features.load_images(train, features.default_transform(body, image_size),
                                          features.class_names(df))
    return features.time_epochs(body, images, labels, batch_size=batch_size, repeats=repeats,
                                device=device, seed=seed)


def main(argv: list[str] | None = None) -> features.EpochTimes:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs through the network (best counts)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--max-images", type=int, default=1024, help="cap on training images timed")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    s = get_settings()
    result = measure(data.items(s.dataset, s), s.image_size, s.batch_size, args.repeats, s.device,
                     max_images=args.max_images)
    print(f"{s.mode} mode: {s.dataset}, {s.arch}, {s.image_size} px, device {s.device}, "
          f"{torch.get_num_threads()} CPU threads, {platform.processor() or platform.machine()}")
    print(result)
    verdict = "meets" if result.ratio >= 20 else "MISSES"
    print(f"acceptance (ratio >= 20): {verdict}")
    return result


if __name__ == "__main__":
    main()
