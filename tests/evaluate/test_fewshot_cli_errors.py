"""`sparsevision fewshot` refuses bad numbers up front (before loading anything) in one line naming the flag."""
import numpy as np
import pytest

from sparsevision.cli import main
from sparsevision.evaluate.fewshot import sample_shots


@pytest.mark.parametrize("flags, message", [
    (["--knn-k", "-1"], "--knn-k must be >= 0 (0 skips kNN), got -1"),
    (["--max-train-examples", "0"], "--max-train-examples must be >= 1, got 0"),
    (["--max-test-examples", "-5"], "--max-test-examples must be >= 1, got -5"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--shots", "0"], "--shots must be positive integers"),
])
def test_bad_numbers_are_refused_before_the_model_is_read(tmp_path, capsys, flags, message):
    # The model does not exist: the flag error must come first.
    assert main(["fewshot", "--model", str(tmp_path / "no_run"), "--data", "digits", *flags]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_too_many_shots_names_the_need_without_internal_names():
    labels = np.repeat(np.arange(3), 4)  # 4 examples per class
    with pytest.raises(ValueError, match=r"10-shot sampling needs 10 examples per class in the train pool, but 3 "
                                         r"class\(es\) have fewer \(class 0: 4.*use fewer shots") as caught:
        sample_shots(labels, [10], seed=0, num_classes=3)
    assert "val_per_class" not in str(caught.value)
    with pytest.raises(ValueError, match=r"needs 6 examples per class \(5 shots \+ 1 held out\)"):
        sample_shots(labels, [5], seed=0, num_classes=3, val_per_class=1)
