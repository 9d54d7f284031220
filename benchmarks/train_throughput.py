"""Pretext training throughput: patches per second for forward + backward + step.

    python benchmarks/train_throughput.py [--batch 16] [--patches 16] [--steps 5]

Uses random patches (speed does not depend on content) and the real model,
losses and optimiser. Prints patches/s and the process's peak memory.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from aigdetect.exif import CATEGORICAL_TAGS, ORDINAL_TAGS
from aigdetect.network import ExifPretextModel, ExtractorConfig
from aigdetect.runtime import pick_device
from aigdetect.training import pretext_losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16, help="photos per step")
    parser.add_argument("--patches", type=int, default=16, help="patches per photo")
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)
    model = ExifPretextModel(ExtractorConfig(patch_size=args.patch_size),
                             {tag: 8 for tag in CATEGORICAL_TAGS}, list(ORDINAL_TAGS)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    size = args.patch_size
    patches = torch.randint(0, 256, (args.batch, args.patches, 3, size, size), dtype=torch.uint8)
    classes = torch.randint(0, 8, (args.batch, len(CATEGORICAL_TAGS)))
    ordinal = torch.rand(args.batch, len(ORDINAL_TAGS))

    def step() -> None:
        losses = pretext_losses(model(patches.to(device)), classes.to(device),
                                ordinal.to(device), "fidelity")
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    per_step = args.batch * args.patches
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"device {device}, threads {torch.get_num_threads()}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")
    print(f"{args.steps} steps of {args.batch} photos x {args.patches} patches of {size}px: "
          f"{seconds / args.steps:.2f} s/step, {per_step * args.steps / seconds:.1f} patches/s "
          f"(forward + backward + AdamW), peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
