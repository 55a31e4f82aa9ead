"""MixUp and the BiT crops, against hand computations."""
import math

import numpy as np
import torch

from sparsevision.transfer.augment import mixup, mixup_cross_entropy, random_crop, resize_images, train_transform


def test_mixup_mixes_each_image_with_its_partner():
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 2, 2).contiguous()
    labels = torch.tensor([0, 1, 2, 3])
    mixed, labels_a, labels_b = mixup(images, labels, 0.7, torch.Generator().manual_seed(5))
    partner = labels_b.tolist()
    assert sorted(partner) == [0, 1, 2, 3] and labels_a.tolist() == [0, 1, 2, 3]
    for i in range(4):  # image i was the constant i, its partner the constant partner[i]
        assert torch.allclose(mixed[i], torch.full((3, 2, 2), 0.7 * i + 0.3 * partner[i]))


def test_mixup_loss_is_cross_entropy_on_the_mixed_targets():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 4))
    ya, yb, lam = np.array([0, 1, 2, 3, 0]), np.array([3, 3, 1, 0, 0]), 0.35
    log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    targets = lam * np.eye(4)[ya] + (1 - lam) * np.eye(4)[yb]  # the mixed one-hot labels
    expected = -(targets * log_probs).sum(1).mean()
    got = mixup_cross_entropy(torch.tensor(logits), torch.tensor(ya), torch.tensor(yb), lam)
    assert math.isclose(float(got), expected, rel_tol=1e-6)


def test_random_crop_takes_windows_and_flips():
    images = torch.randn(6, 3, 10, 10)
    gen = torch.Generator().manual_seed(0)
    crops = random_crop(images, 7, gen, flip=True)
    assert crops.shape == (6, 3, 7, 7)
    flipped = 0
    for img, crop in zip(images, crops):
        windows = [(img[:, r:r + 7, c:c + 7], f) for r in range(4) for c in range(4) for f in (False, True)]
        hits = [f for w, f in windows if torch.equal(w.flip(-1) if f else w, crop)]
        assert len(hits) == 1
        flipped += hits[0]
    assert 0 < flipped < 6  # both outcomes happen with this seed
    assert torch.equal(random_crop(images, 10, gen, flip=False), images)


def test_train_and_eval_transforms():
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    assert train_transform(images, 40, 32, torch.Generator().manual_seed(1), flip=False).shape == (2, 3, 32, 32)
    assert resize_images(images, 32) is images  # evaluation at the crop size: nothing to resize
    # a constant image stays constant under the resize
    const = torch.full((1, 3, 8, 8), 0.25)
    assert torch.allclose(resize_images(const, 20), torch.full((1, 3, 20, 20), 0.25))
