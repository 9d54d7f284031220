"""The training losses under bf16 autocast, the path a CUDA GPU takes.

No GPU runs the tests, but PyTorch's CPU autocast casts the same layers to bf16:
these tests check that every loss the shared engine optimises comes out finite
and in float32, that gradients reach every trained weight, and that the values
stay close to full precision. (The covariance pooling opts out of autocast: its
matrix square root is run in float32 whatever the device.)
"""

from __future__ import annotations

import torch

from aigdetect.exif import CATEGORICAL_TAGS, ORDINAL_TAGS
from aigdetect.losses import feature_distillation_loss
from aigdetect.network import BinaryClassifier, ExifPretextModel, ExtractorConfig, stage_features
from aigdetect.training import pretext_losses

SMALL = ExtractorConfig(width=8, patch_size=32)


def bf16() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def patches(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (4, 3, 3, 32, 32), dtype=torch.uint8, generator=generator)


def pretext_batch_losses(model: ExifPretextModel, autocast: bool) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    classes = torch.randint(0, 2, (4, len(CATEGORICAL_TAGS)), generator=generator)
    ordinal = torch.randn(4, len(ORDINAL_TAGS), generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        output = model(patches(0))
    return pretext_losses(output, classes, ordinal, "fidelity")


def test_pretext_losses_under_bf16_are_finite_float32_and_close() -> None:
    torch.manual_seed(0)
    counts = {tag: 2 for tag in CATEGORICAL_TAGS}
    model = ExifPretextModel(SMALL, counts, list(ORDINAL_TAGS))
    mixed = pretext_batch_losses(model, autocast=True)
    full = pretext_batch_losses(model, autocast=False)
    assert mixed.keys() == full.keys()
    for name, loss in mixed.items():
        assert loss.dtype == torch.float32 and torch.isfinite(loss), name
        assert abs(loss.item() - full[name].item()) < 0.05 * max(1.0, abs(full[name].item()))
    sum(mixed.values()).backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)


def test_binary_losses_with_distillation_under_bf16() -> None:
    torch.manual_seed(0)
    student, teacher = BinaryClassifier(SMALL), ExifPretextModel(SMALL, {}, []).extractor
    labels = torch.tensor([0, 1, 0, 1])
    with bf16():
        logits, features = student(patches(2))
    with torch.no_grad(), bf16():
        targets = stage_features(teacher, patches(2))
    ce = torch.nn.functional.cross_entropy(logits.float(), labels)
    distill = feature_distillation_loss(features, targets)
    for loss in (ce, distill):
        assert loss.dtype == torch.float32 and torch.isfinite(loss) and loss > 0
    (ce + 0.05 * distill).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in student.parameters())
