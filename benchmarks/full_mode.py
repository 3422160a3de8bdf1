"""Full mode's workshop plan: throughput of its architectures, and each notebook's time on Pets.

Measures, on whatever device it runs (CUDA if available, else the CPU):

* decoding: photos a second one core turns from JPEG into a 224-pixel tensor (the
  work of one DataLoader worker), on the packaged Oxford-IIIT Pet photos;
* training and inference throughput (images a second) of each architecture full mode
  uses, at 224 pixels, on batches of those photos (random weights: speed does not
  depend on them, and nothing is downloaded); mixed precision on a GPU;
* forward FLOPs per image (``torch.utils.flop_counter``).

From these it estimates each notebook's full-mode time on all of Oxford-IIIT Pets
(7,390 photos: 70 % train, 10 % valid, 20 % test) with the full-mode settings, for this
device and, by the scaling stated in ``T4_ASSUMPTION``, for a Colab T4.  Prints two
tables and writes them as CSV (``--out``, default ``build/benchmarks``).

    python benchmarks/full_mode.py                 # a few batches each: a minute or two on a CPU
    python benchmarks/full_mode.py --batches 10    # steadier figures
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import timm
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from tlcourse import data, settings
from tlcourse.data import images

PETS_IMAGES = 7390
SPLIT = {"train": 0.7, "valid": 0.1, "test": 0.2}

#: How a Colab T4 is estimated (no GPU was available where this was written):
#: NVIDIA publishes 1,165 images/s for ResNet-50 v1.5 inference on a T4 with mixed
#: precision at batch 64 (DeepLearningExamples, PyTorch ResNet50 v1.5 README); an
#: architecture is assumed to run at that rate times (ResNet-50's forward FLOPs / its own),
#: halved for networks built on depthwise convolutions (EfficientNet, ConvNeXt), which use
#: a GPU's tensor cores far less well than ResNets; training (forward and backward) is
#: assumed to take three times the work of inference.  Colab gives 2 CPU cores, so
#: decoding runs at twice this machine's one-core rate, and an epoch takes as long as
#: the slower of decoding and computing.
T4_RN50_INFER = 1165.0
T4_ASSUMPTION = ("T4: ResNet-50 AMP inference 1,165 img/s (NVIDIA DeepLearningExamples) scaled by "
                 "forward FLOPs, x0.5 for depthwise-convolution networks, training = inference / 3; "
                 "decoding on Colab's 2 cores = 2 x this machine's one-core rate")
CORES_ON_COLAB = 2


def build(arch: str, num_classes: int = 37) -> torch.nn.Module:
    """``arch`` with random weights and a ``num_classes`` head (torchvision or timm)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        if arch in ("resnet18", "resnet34", "resnet50"):
            return getattr(torchvision.models, arch)(num_classes=num_classes)
        return timm.create_model(arch, pretrained=False, num_classes=num_classes)


def depthwise(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
               for m in model.modules())


def forward_gflops(model: torch.nn.Module, size: int = 224) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def photos(size: int, n: int) -> tuple[torch.Tensor, float]:
    """``n`` packaged Pets photos as a (n, 3, size, size) batch, and decoding photos/s on one core."""
    files = sorted(data.pets_dir().glob("*.jpg"))[:n]
    start = time.perf_counter()
    tensors = []
    for f in files:
        img = images.load_image(f)
        scale = size / min(img.size)
        img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))))
        left, top = (img.width - size) // 2, (img.height - size) // 2
        img = img.crop((left, top, left + size, top + size))
        tensors.append(torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
                       .view(size, size, 3).permute(2, 0, 1))
    rate = len(files) / (time.perf_counter() - start)
    return torch.stack(tensors).float().div(255), rate


def throughput(model: torch.nn.Module, batch: torch.Tensor, batches: int, train: bool, device: str) -> float:
    """Images a second over ``batches`` batches, after one warm-up batch."""
    model = model.to(device).train(train)
    x = batch.to(device)
    y = torch.randint(0, 37, (len(x),), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    amp = torch.autocast("cuda", dtype=torch.float16, enabled=device == "cuda")

    def step():
        if train:
            with amp:
                loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            with torch.no_grad(), amp:
                model(x)

    step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return batches * len(x) / (time.perf_counter() - start)


def measure(archs: list[str], batch_size: int, batches: int, device: str) -> tuple[pd.DataFrame, float]:
    batch, decode = photos(224, batch_size)
    rn50 = forward_gflops(build("resnet50"))
    rows = []
    for arch in archs:
        model = build(arch)
        gflops = forward_gflops(model)
        dw = depthwise(model)
        t4_infer = T4_RN50_INFER * rn50 / gflops * (0.5 if dw else 1.0)
        rows.append({"arch": arch, "forward_gflops": round(gflops, 2), "depthwise": dw,
                     f"train_img_s_{device}": throughput(model, batch, batches, True, device),
                     f"infer_img_s_{device}": throughput(model, batch, batches, False, device),
                     "train_img_s_t4_est": t4_infer / 3, "infer_img_s_t4_est": t4_infer})
    return pd.DataFrame(rows), decode


def notebook_work(s: settings.Settings) -> dict[str, dict[str, float]]:
    """Images each full-mode notebook pushes through each network, by kind of pass.

    ``train`` and ``infer`` count images at ``s.image_size`` through ``s.arch``; ``features``
    images through the offline EfficientNet-Lite0 (lessons 01, 02, 05 use it for features);
    ``decode`` full-size photos read once (the resized copy, and lesson 06's check).
    """
    n_train, n_valid, n_test = (round(PETS_IMAGES * SPLIT[k]) for k in ("train", "valid", "test"))
    epoch = lambda k: k * n_train  # noqa: E731
    evals = lambda fits: fits * (n_valid * 1 + n_test)  # noqa: E731  (valid once a fit, simplified; test once)
    fr, ep, seeds = 1, s.epochs, len(s.seeds)
    work = {}
    work["00_setup"] = {"decode": PETS_IMAGES, "infer": 64, "features": 200}
    work["01_imagenet"] = {"features": 300}
    work["02_feature_extraction"] = {"features": PETS_IMAGES + 4 * s.batch_size * 2}
    # 03: lr_find (30 batches), a first fit, 3 BatchNorm variants and 2 heads over the seeds.
    fits03 = 1 + 3 * seeds + 2 * seeds
    work["03_head_only"] = {"train": 30 * s.batch_size + fits03 * epoch(ep),
                            "infer": evals(fits03) + fits03 * (ep - 1) * n_valid}
    # 04: fine_tune and the same steps by hand, then head only, fine_tune and gradual over the seeds.
    epochs04 = 2 * (fr + ep) + seeds * (ep + (fr + ep) + (fr + ep))
    work["04_fine_tuning"] = {"train": epoch(epochs04),
                              "infer": evals(2 + 3 * seeds) + epochs04 * n_valid}
    work["05_transfer_vs_scratch"] = lesson05_work(s)
    # The accuracy target (docs/instructors.md): one fine_tune(epochs) with one frozen epoch.
    work["one fine_tune (lesson 04's recipe)"] = {"train": epoch(fr + ep), "infer": (fr + ep) * n_valid + n_test}
    work["06_your_own_data"] = {"decode": PETS_IMAGES, "train": round(PETS_IMAGES * 0.8) * (fr + ep),
                                "infer": round(PETS_IMAGES * 0.2) * (fr + ep + 1)}
    return work


def lesson05_work(s: settings.Settings) -> dict[str, float]:
    """Lesson 05's grid (``experiments.lesson_runs``) in images through each network."""
    from tlcourse import experiments

    classes = {"pets": 37, s.few_shot_dataset: 37, s.far_dataset: 10, "cats_dogs": 2}
    train = 0.0
    for run in experiments.lesson_runs(s):
        if run.strategy in ("head-only", "scratch"):  # cached features / a tiny CNN: small next to the rest
            continue
        size = s.image_size if run.domain != s.far_dataset else s.far_image_size
        n = run.per_class * classes.get(run.domain, 37)
        train += n * (1 + s.sweep_epochs) * (size / s.image_size) ** 2
    far = 8000 * (s.far_image_size / s.image_size) ** 2  # far-domain features, at its own size
    return {"train": train, "features": PETS_IMAGES + 370 + far}


def estimate(work: dict, rates: dict[str, float]) -> float:
    return sum(n / rates[kind] for kind, n in work.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3, help="timed batches per measurement")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: a shared machine)")
    parser.add_argument("--out", type=Path, default=Path("build/benchmarks"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {args.threads} torch thread(s)"

    import os
    saved = os.environ.get("TLCOURSE_MODE")
    os.environ["TLCOURSE_MODE"] = "full"
    try:
        full = replace(settings.get_settings(), device=device)
    finally:
        if saved is None:
            os.environ.pop("TLCOURSE_MODE")
        else:
            os.environ["TLCOURSE_MODE"] = saved
    archs = list(dict.fromkeys([full.arch, "resnet34", settings.OFFLINE_ARCH]))
    table, decode = measure(archs, args.batch_size, args.batches, device)
    print(f"Throughput at 224 px on {where} (batch {args.batch_size}, {args.batches} timed batches); "
          f"decoding {decode:.0f} photos/s on one core")
    print(table.round(1).to_string(index=False))

    by_arch = table.set_index("arch")
    rows = []
    for name, work in notebook_work(full).items():
        row = {"notebook": name}
        for label, col, decode_rate in ((device, device, decode * max(1, full.num_workers)),
                                        ("t4_est", "t4_est", decode * CORES_ON_COLAB)):
            rates = {"train": by_arch.loc[full.arch, f"train_img_s_{col}"],
                     "infer": by_arch.loc[full.arch, f"infer_img_s_{col}"],
                     "features": by_arch.loc[settings.OFFLINE_ARCH, f"infer_img_s_{col}"],
                     "decode": decode_rate}
            compute = estimate({k: v for k, v in work.items() if k != "decode"}, rates)
            # Every pass also decodes its photos; an epoch waits for the slower of the two.
            loading = sum(work.values()) / decode_rate
            row[f"minutes_{label}"] = max(compute, loading) / 60
        row["fits_an_hour_on_t4"] = row["minutes_t4_est"] <= 60
        rows.append(row)
    plan = pd.DataFrame(rows)
    print(f"\nEstimated full-mode time per notebook on Pets ({PETS_IMAGES:,} photos), arch {full.arch}, "
          f"epochs {full.epochs}, seeds {len(full.seeds)}, sweep_epochs {full.sweep_epochs}:")
    print(plan.round(1).to_string(index=False))
    print(f"\nAssumption: {T4_ASSUMPTION}.")
    args.out.mkdir(parents=True, exist_ok=True)
    table.assign(device=where, decode_img_s_one_core=decode).to_csv(args.out / "full_mode_throughput.csv", index=False)
    plan.assign(device=where, assumption=T4_ASSUMPTION).to_csv(args.out / "full_mode_notebooks.csv", index=False)
    print(f"Wrote {args.out / 'full_mode_throughput.csv'} and {args.out / 'full_mode_notebooks.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
