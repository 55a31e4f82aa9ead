"""Zero-shot classification with hand-built embeddings and retrieval recall@k against brute-force numpy loops."""
import numpy as np
import pytest
import torch
from torch import nn

from sparsevision.evaluate.zeroshot import (GENERATED_TEMPLATES, PHOTO_TEMPLATES, class_embeddings,
                                            evaluate_retrieval, retrieval_recall, templates_for, zeroshot_classify,
                                            zeroshot_logits)


def brute_force_recall(sim, text_to_image, k):
    """sim [N, T] float64; loops with explicit sorting, as a human would compute it."""
    n, t = sim.shape
    i2t = 0
    for i in range(n):
        order = sorted(range(t), key=lambda j: -sim[i, j])[:k]
        i2t += any(text_to_image[j] == i for j in order)
    t2i = 0
    for j in range(t):
        order = sorted(range(n), key=lambda i: -sim[i, j])[:k]
        t2i += text_to_image[j] in order
    return i2t / n, t2i / t


@pytest.mark.parametrize("captions_per_image", [1, 3])
def test_retrieval_recall_matches_brute_force(captions_per_image):
    rng = np.random.default_rng(captions_per_image)
    n, d = 12, 6
    img = rng.normal(size=(n, d))
    text_to_image = np.repeat(np.arange(n), captions_per_image)
    txt = img[text_to_image] + 1.2 * rng.normal(size=(len(text_to_image), d))  # noisy: recall between 0 and 1
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = unit(img) @ unit(txt).T
    got = retrieval_recall(torch.tensor(img), torch.tensor(txt), ks=(1, 5),
                           text_to_image=None if captions_per_image == 1 else torch.tensor(text_to_image))
    for k in (1, 5):
        i2t, t2i = brute_force_recall(sim, text_to_image, k)
        assert got[f"i2t_recall@{k}"] == pytest.approx(i2t)
        assert got[f"t2i_recall@{k}"] == pytest.approx(t2i)
    assert 0 < got["t2i_recall@1"] < 1


class LookupTokenizer:
    """Maps each distinct string to an id (its embedding row in the fake model)."""

    def __init__(self):
        self.ids = {}

    def __call__(self, texts):
        return torch.tensor([[self.ids.setdefault(t, len(self.ids))] for t in texts])


class FakeImageTextModel(nn.Module):
    """encode_text: a fixed vector per string (class vector + template vector); encode_image: the image's first
    pixel picks a row of an explicit image-embedding table."""

    def __init__(self, tokenizer, text_vectors: dict, image_table: torch.Tensor):
        super().__init__()
        self.tokenizer, self.text_vectors = tokenizer, text_vectors
        self.image_table = nn.Parameter(image_table, requires_grad=False)

    def encode_text(self, tokens):
        names = {v: k for k, v in self.tokenizer.ids.items()}
        return torch.stack([self.text_vectors[names[int(t)]] for t in tokens[:, 0]])

    def encode_image(self, images):
        return self.image_table[images[:, 0, 0, 0].long()]

    def build_tokenizer(self):
        return self.tokenizer


class TinyLabelled:
    def __init__(self, labels, class_names, name="toy"):
        self.labels, self.class_names, self.name = labels, class_names, name

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return torch.full((3, 2, 2), float(i)), self.labels[i]  # pixel value = row of the image table


def test_class_embeddings_average_normalised_prompts():
    rng = np.random.default_rng(0)
    classes, templates = ["cat", "dog", "owl"], ["a {}", "the {}!"]
    vectors = {t.format(c): torch.tensor(rng.normal(size=4)) for c in classes for t in templates}
    tok = LookupTokenizer()
    model = FakeImageTextModel(tok, vectors, torch.zeros(1, 4, dtype=torch.float64))
    got = class_embeddings(model, tok, classes, templates).numpy()
    for c, name in enumerate(classes):
        units = [vectors[t.format(name)].numpy() / np.linalg.norm(vectors[t.format(name)].numpy()) for t in templates]
        mean = np.mean(units, axis=0)
        np.testing.assert_allclose(got[c], mean / np.linalg.norm(mean), rtol=1e-6)


def test_zeroshot_classify_with_hand_built_embeddings():
    # Three orthogonal class directions; each template adds the same offset to every class. Images lie near their
    # class direction, except images 4 and 5, placed nearer the wrong class: accuracy must be exactly 4/6.
    e = torch.eye(4, dtype=torch.float64)[:3]
    templates = ["an image of {}", "{}"]
    offsets = {"an image of {}": 0.3 * torch.eye(4, dtype=torch.float64)[3], "{}": torch.zeros(4, dtype=torch.float64)}
    classes = ["red", "green", "blue"]
    vectors = {t.format(c): e[i] + offsets[t] for i, c in enumerate(classes) for t in templates}
    labels = [0, 1, 2, 0, 1, 2]
    table = torch.stack([e[0], e[1], e[2], e[0] * 0.9, e[2], e[0]]) + 0.05
    model = FakeImageTextModel(LookupTokenizer(), vectors, table)
    result = zeroshot_classify(model, TinyLabelled(labels, classes), templates=templates)
    # Reference: argmax of cosine to the hand-averaged class vectors.
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    class_vecs = unit(np.stack([np.mean([unit(vectors[t.format(c)].numpy()) for t in templates], 0)
                                for c in classes]))
    predicted = (unit(table.numpy()) @ class_vecs.T).argmax(1)
    assert result["accuracy"] == pytest.approx(np.mean(predicted == np.array(labels))) == pytest.approx(4 / 6)
    assert result["chance"] == pytest.approx(1 / 3) and result["num_examples"] == 6
    assert result["majority"] == pytest.approx(2 / 6)
    assert "top5_accuracy" not in result


def test_zeroshot_logits_are_cosines():
    a, b = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(zeroshot_logits(a, b), torch.tensor([[0.6, 0.8]]))


def test_evaluate_retrieval_on_pairs():
    class Pairs:
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.full((3, 2, 2), float(i)), f"caption {i}", -1

    tok = LookupTokenizer()
    e = torch.eye(3, dtype=torch.float64)
    vectors = {f"caption {i}": e[i] for i in range(3)}
    model = FakeImageTextModel(tok, vectors, torch.stack([e[0], e[2], e[1]]))  # images 1 and 2 swapped
    result = evaluate_retrieval(model, Pairs(), tokenizer=tok, ks=(1, 2))
    assert result["i2t_recall@1"] == pytest.approx(1 / 3) and result["t2i_recall@1"] == pytest.approx(1 / 3)
    assert result["num_pairs"] == 3


def test_templates_and_errors():
    assert templates_for("dsprites_shape") == GENERATED_TEMPLATES["dsprites_shape"]
    assert templates_for("captions:counting") == GENERATED_TEMPLATES["counting"]
    assert templates_for("folder:/x") == PHOTO_TEMPLATES
    model = FakeImageTextModel(LookupTokenizer(), {}, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="exactly one"):
        class_embeddings(model, LookupTokenizer(), ["a"], ["no slot"])
    with pytest.raises(ValueError, match="class_names"):
        zeroshot_classify(model, TinyLabelled([0], []))
    with pytest.raises(ValueError, match="text_to_image"):
        retrieval_recall(torch.randn(3, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="image indices"):
        retrieval_recall(torch.randn(3, 2), torch.randn(2, 2), text_to_image=torch.tensor([0, 5]))
