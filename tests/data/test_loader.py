"""make_loader / materialize / random_crop_flip: deterministic order, exact tensors, seeded augmentation."""
import pytest
import torch
import torch.nn.functional as F

from sparsevision.data import build_dataset, make_loader, materialize, random_crop_flip


def _epoch_labels(loader):
    return [y.tolist() for _, y in loader]


def test_loader_order_depends_only_on_seed():
    ds = build_dataset("digits", split="val", image_size=8)
    a, b, c = (make_loader(ds, 16, shuffle=True, seed=s) for s in (7, 7, 8))
    torch.manual_seed(123)  # global RNG state must not matter
    ea1, ea2 = _epoch_labels(a), _epoch_labels(a)
    torch.manual_seed(999)
    eb1, eb2 = _epoch_labels(b), _epoch_labels(b)
    assert ea1 == eb1 and ea2 == eb2 and ea1 != ea2  # same sequence of epochs, and epochs differ
    assert _epoch_labels(c) != ea1
    # An epoch is a permutation of the dataset.
    assert sorted(sum(ea1, [])) == sorted(ds.labels().tolist())


def test_loader_batches_and_drop_last():
    ds = build_dataset("textures", num_examples=50, image_size=8)
    batches = list(make_loader(ds, 16))
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    assert batches[0][0].shape == (16, 3, 8, 8) and batches[0][1].dtype == torch.int64
    assert [len(y) for _, y in make_loader(ds, 16, drop_last=True)] == [16, 16, 16]
    assert torch.equal(batches[0][0][3], ds[3][0])  # unshuffled order is index order
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(ds, 0)
    with pytest.raises(ValueError, match="drop_last"):
        make_loader(ds, 64, drop_last=True)


def test_materialize_and_to_tensors():
    ds = build_dataset("counting", num_examples=12, image_size=16)
    x, y = materialize(ds)
    assert x.shape == (12, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x, torch.stack([ds[i][0] for i in range(12)]))
    assert y.tolist() == [ds[i][1] for i in range(12)]
    x2, y2 = ds.to_tensors()
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert materialize(ds, max_examples=5)[0].shape[0] == 5


def test_random_crop_flip_is_a_window_of_the_padded_image_possibly_mirrored():
    x = torch.randn(6, 3, 8, 8)
    pad = 2
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    out = random_crop_flip(x, g1, padding=pad)
    assert torch.equal(out, random_crop_flip(x, g2, padding=pad))
    padded = F.pad(x, (pad,) * 4, value=-1.0)
    seen_flip = seen_shift = False
    for b in range(6):
        matches = [(dy, dx, flip) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for flip in (False, True)
                   if torch.equal(out[b], (lambda w: w.flip(-1) if flip else w)(padded[b, :, dy:dy + 8, dx:dx + 8]))]
        assert matches, b
        seen_flip |= any(f for _, _, f in matches)
        seen_shift |= any((dy, dx) != (pad, pad) for dy, dx, _ in matches)
    assert seen_shift and seen_flip  # seed 0 draws both (fixed seed, so not flaky)
    assert torch.equal(random_crop_flip(x, g1, padding=0, flip=False), x)
    flipped = random_crop_flip(x, torch.Generator().manual_seed(1), padding=0, flip=True)
    assert all(torch.equal(flipped[b], x[b]) or torch.equal(flipped[b], x[b].flip(-1)) for b in range(6))
    with pytest.raises(ValueError, match="B, C, H, W"):
        random_crop_flip(x[0], g1)
