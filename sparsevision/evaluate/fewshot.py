"""Few-shot linear evaluation of frozen features by closed-form ridge regression.

The recipe is the one of the V-MoE / big_vision few-shot evaluators (`vmoe/evaluate/fewshot.py`,
`big_vision/evaluators/fewshot_lsr.py`), re-implemented in float64 numpy:

* shots: for each class c in 0..C-1, one `np.random.default_rng(seed).permutation` of that class's indices in the
  train pool (classes drawn in order from one generator); the k-shot training set is the first k of every
  permutation. The shot sets are therefore nested (the 1-shot set is inside the 5-shot set) and, for the same seed,
  the very examples the official evaluators pick.
* features are standardised with the mean and (population) standard deviation + 1e-5 of the k-shot training set,
  then a constant feature of 100 is appended: a bias that the common L2 penalty barely touches (its effective
  penalty is l2 / 100^2).
* targets are one-vs-all in {-1, +1}: `2 * one_hot(y) - 1`.
* W = (X^T X + l2 I)^-1 X^T Y, solved through the eigendecomposition of the smaller of X^T X (D+1 square) and
  X X^T (N square, via W = X^T (X X^T + l2 I)^-1 Y), so a whole grid of l2 costs one `eigh`.
* prediction is the argmax over the C regression outputs.

Choosing l2. V-MoE picks, per shot count, the grid value with the best mean *test*-accuracy rank over all few-shot
datasets (one value shared by the tasks, "like the BiT-HyperRule"); big_vision uses a fixed l2 = 2^10. Selecting on
test is optimistic for a single task, so `fewshot_eval` by default selects on held-out examples of the train pool
that are never among the sampled shots (`l2_selection="holdout"`, see `sample_shots`); `"test"` reproduces the
single-task view of the official rule, and `select_l2_by_mean_rank` the cross-task rule over several results.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

BIAS_CONSTANT = 100.0  # official value: the appended bias feature
STD_EPS = 1e-5  # official: added to the per-feature std before whitening
# V-MoE's default grid (vmoe/configs/common_fewshot.py): 2^-10 ... 2^19.
DEFAULT_L2_GRID = tuple(2.0 ** i for i in range(-10, 20))
DEFAULT_SHOTS = (1, 5, 10, 25)
BIAS_MODES = ("constant", "center", "none")


def _as_float64(x, name: str, ndim: int) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor on any device
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _as_labels(y, name: str, n: int | None = None) -> np.ndarray:
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D integer labels, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(y == np.round(y)):
            raise ValueError(f"{name} must hold integer class ids, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} entries but the features have {n} rows")
    if y.size and y.min() < 0:
        raise ValueError(f"{name} contains negative class id {int(y.min())}")
    return y


def _check_l2(l2: float) -> float:
    l2 = float(l2)
    if not np.isfinite(l2) or l2 <= 0:
        raise ValueError(f"l2 must be a positive finite number, got {l2}")
    return l2


def _check_l2_grid(l2_grid: Sequence[float]) -> list[float]:
    grid = [_check_l2(l2) for l2 in l2_grid]
    if not grid:
        raise ValueError("l2_grid is empty")
    return grid


def pm1_targets(labels, num_classes: int) -> np.ndarray:
    """[N, C] one-vs-all targets in {-1, +1} (official: `2 * one_hot(y) - 1`)."""
    labels = _as_labels(labels, "labels")
    if labels.size and labels.max() >= num_classes:
        raise ValueError(f"labels contain class {int(labels.max())} but num_classes={num_classes}")
    return 2.0 * np.eye(num_classes)[labels] - 1.0


class RidgeSolver:
    """Ridge regression for many l2 values from one eigendecomposition (the official `_precompute_cache`).

    bias: "constant" appends a constant feature `bias_constant` that is penalised like the others (official);
    "center" fits an unpenalised intercept by centring x and y (scikit-learn `Ridge(fit_intercept=True)`);
    "none" fits no intercept.
    """

    def __init__(self, x, y, *, bias: str = "constant", bias_constant: float = BIAS_CONSTANT):
        if bias not in BIAS_MODES:
            raise ValueError(f"bias must be one of {BIAS_MODES}, got {bias!r}")
        x = _as_float64(x, "x", 2)
        y = _as_float64(y, "y", 2)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
        if x.shape[0] == 0:
            raise ValueError("ridge regression needs at least one example")
        self.bias, self.bias_constant, self.dim = bias, float(bias_constant), x.shape[1]
        self.x_mean = x.mean(0) if bias == "center" else np.zeros(x.shape[1])
        self.y_mean = y.mean(0) if bias == "center" else np.zeros(y.shape[1])
        x, y = x - self.x_mean, y - self.y_mean
        if bias == "constant":
            x = np.concatenate([x, np.full((x.shape[0], 1), self.bias_constant)], axis=1)
        n, d = x.shape
        # Both W = (X^T X + l2 I)^-1 X^T Y and W = X^T (X X^T + l2 I)^-1 Y read lhs (diag(eigs) + l2)^-1 rhs.
        if n >= d:
            self.eigs, q = np.linalg.eigh(x.T @ x)
            self.lhs, self.rhs = q, q.T @ (x.T @ y)
        else:
            self.eigs, q = np.linalg.eigh(x @ x.T)
            self.lhs, self.rhs = x.T @ q, q.T @ y

    def weights(self, l2: float) -> tuple[np.ndarray, np.ndarray]:
        """(W [D, C], b [C]) so that predictions are `x @ W + b` on the features given to the constructor."""
        l2 = _check_l2(l2)
        w = (self.lhs / (self.eigs + l2)) @ self.rhs
        if self.bias == "constant":
            return w[: self.dim], self.bias_constant * w[self.dim]
        return w, self.y_mean - self.x_mean @ w


def ridge_fit(x, y, l2: float, *, bias: str = "constant",
              bias_constant: float = BIAS_CONSTANT) -> tuple[np.ndarray, np.ndarray]:
    """Minimise ||x W + b - y||^2 + l2 ||W||^2 (plus l2 (b / bias_constant)^2 for bias="constant").

    x: [N, D] features, y: [N, C] targets (e.g. `pm1_targets`). Returns float64 (W [D, C], b [C]).
    """
    return RidgeSolver(x, y, bias=bias, bias_constant=bias_constant).weights(l2)


def _standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(0), x.std(0) + STD_EPS


def fit_linear_probe(feats, labels, num_classes: int, l2: float, *,
                     standardize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The official few-shot classifier as (W [D, C], b [C]) acting on *raw* features: `argmax(x @ W + b)`.

    The whitening (x - mean) / std of the training features is folded into W and b.
    """
    x = _as_float64(feats, "feats", 2)
    labels = _as_labels(labels, "labels", x.shape[0])
    mean, std = _standardizer(x) if standardize else (np.zeros(x.shape[1]), np.ones(x.shape[1]))
    w, b = ridge_fit((x - mean) / std, pm1_targets(labels, num_classes), l2)
    w = w / std[:, None]
    return w, b - mean @ w


def sample_shots(labels, shots: int | Sequence[int], num_classes: int | None = None, seed: int = 0,
                 val_per_class: int | None = 0) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Indices of the k-shot training sets and of a held-out validation set, from one train pool.

    Per class c (in order 0..C-1, all from one `np.random.default_rng(seed)`), a random permutation of the pool
    indices of class c; the k-shot set is its first k entries for each class (as officially: nested sets).
    Validation: `val_per_class=None` takes every remaining pool example after the largest shot count; an integer v
    takes the *last* v entries of each permutation, so it does not depend on which shot counts were asked for;
    0 gives no validation set. Validation never overlaps any shot set. Raises ValueError if a class has fewer
    than max(shots) (+ v) examples.
    """
    labels = _as_labels(labels, "labels")
    shot_list = [shots] if isinstance(shots, (int, np.integer)) else list(shots)
    if not shot_list or any(int(k) < 1 for k in shot_list):
        raise ValueError(f"shots must be positive integers, got {shots}")
    shot_list = [int(k) for k in shot_list]
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    if num_classes < 1:
        raise ValueError(f"need at least one class, got num_classes={num_classes}")
    if labels.size and labels.max() >= num_classes:
        raise ValueError(f"labels contain class {int(labels.max())} but num_classes={num_classes}")
    if val_per_class is not None and val_per_class < 0:
        raise ValueError(f"val_per_class must be >= 0 or None, got {val_per_class}")
    max_shot, need = max(shot_list), max(shot_list) + (val_per_class or 0)
    counts = np.bincount(labels, minlength=num_classes)
    short = [(c, int(counts[c])) for c in range(num_classes) if counts[c] < need]
    if short:
        shown = ", ".join(f"class {c}: {n}" for c, n in short[:5])
        held_out = f" ({max_shot} shots + {val_per_class} held out)" if val_per_class else ""
        raise ValueError(f"{max_shot}-shot sampling needs {need} examples per class{held_out} in the train pool, but "
                         f"{len(short)} class(es) have fewer ({shown}); use fewer shots or a larger pool")
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    sets = {k: np.concatenate([p[:k] for p in perms]) for k in shot_list}
    if val_per_class is None:
        val = np.concatenate([p[max_shot:] for p in perms])
    else:
        val = np.concatenate([p[len(p) - val_per_class:] for p in perms])
    return sets, val.astype(np.int64)


def _pick_l2(l2_grid: Sequence[float], accuracies: Sequence[float]) -> float:
    # Ties go to the larger l2, the more regularised (simpler) classifier.
    best = max(accuracies)
    return max(l2 for l2, a in zip(l2_grid, accuracies) if a == best)


def _grid_accuracies(solver: RidgeSolver, x: np.ndarray, y: np.ndarray, grid: Sequence[float]) -> list[float]:
    if x.shape[0] == 0:
        return [float("nan")] * len(grid)
    out = []
    for l2 in grid:
        w, b = solver.weights(l2)
        out.append(float(np.mean(np.argmax(x @ w + b, axis=1) == y)))
    return out


def ridge_l2_search(train_feats, train_labels, val_feats, val_labels, num_classes: int,
                    l2_grid: Sequence[float] = DEFAULT_L2_GRID) -> tuple[float, list[float]]:
    """(best l2, validation accuracy per l2) of the official ridge classifier (whitened on the training features)
    fitted once on the training set, the whole grid from one eigendecomposition; ties go to the larger l2."""
    grid = _check_l2_grid(l2_grid)
    x = _as_float64(train_feats, "train_feats", 2)
    y = _as_labels(train_labels, "train_labels", x.shape[0])
    x_val = _as_float64(val_feats, "val_feats", 2)
    y_val = _as_labels(val_labels, "val_labels", x_val.shape[0])
    if x_val.shape[0] == 0:
        raise ValueError("val_feats is empty")
    mean, std = _standardizer(x)
    solver = RidgeSolver((x - mean) / std, pm1_targets(y, num_classes))
    accuracies = _grid_accuracies(solver, (x_val - mean) / std, y_val, grid)
    return _pick_l2(grid, accuracies), accuracies


def fewshot_eval(train_feats, train_labels, test_feats, test_labels, shots: Sequence[int] = DEFAULT_SHOTS,
                 l2_grid: Sequence[float] = DEFAULT_L2_GRID, seed: int = 0, num_classes: int | None = None,
                 l2_selection: str = "holdout", val_per_class: int | None = None, val_feats=None,
                 val_labels=None) -> dict[int, dict]:
    """Few-shot accuracy on test features for each shot count, with ridge classifiers fit on sampled shots.

    l2_selection: "holdout" (default) picks, per shot count, the grid value with the best accuracy on validation
    examples: `val_feats`/`val_labels` if given, else the pool examples never sampled as shots (`sample_shots`
    with `val_per_class`); "test" picks the best test accuracy (the official rule on a single task; optimistic).
    A one-value grid is the big_vision fixed-l2 setting. Ties go to the larger l2.

    Returns {k: {"accuracy", "l2", "val_accuracy", "num_train", "num_val", "l2_grid", "test_accuracy_per_l2",
    "val_accuracy_per_l2"}} with plain floats / ints / lists.
    """
    if l2_selection not in ("holdout", "test"):
        raise ValueError(f"l2_selection must be 'holdout' or 'test', got {l2_selection!r}")
    grid = _check_l2_grid(l2_grid)
    x_pool = _as_float64(train_feats, "train_feats", 2)
    y_pool = _as_labels(train_labels, "train_labels", x_pool.shape[0])
    x_test = _as_float64(test_feats, "test_feats", 2)
    y_test = _as_labels(test_labels, "test_labels", x_test.shape[0])
    if x_test.shape[1] != x_pool.shape[1]:
        raise ValueError(f"test_feats have dim {x_test.shape[1]} but train_feats have {x_pool.shape[1]}")
    if x_test.shape[0] == 0:
        raise ValueError("test_feats is empty")
    explicit_val = val_feats is not None or val_labels is not None
    if explicit_val:
        if val_feats is None or val_labels is None:
            raise ValueError("give both val_feats and val_labels, or neither")
        x_val = _as_float64(val_feats, "val_feats", 2)
        y_val = _as_labels(val_labels, "val_labels", x_val.shape[0])
        if x_val.shape[1] != x_pool.shape[1]:
            raise ValueError(f"val_feats have dim {x_val.shape[1]} but train_feats have {x_pool.shape[1]}")
    if num_classes is None:
        num_classes = int(max([y_pool.max(initial=-1), y_test.max(initial=-1)]
                              + ([y_val.max(initial=-1)] if explicit_val else []))) + 1
    for name, y in [("test_labels", y_test)] + ([("val_labels", y_val)] if explicit_val else []):
        if y.size and y.max() >= num_classes:
            raise ValueError(f"{name} contain class {int(y.max())} but num_classes={num_classes}")
    use_pool_val = l2_selection == "holdout" and not explicit_val
    sets, val_idx = sample_shots(y_pool, shots, num_classes, seed, val_per_class if use_pool_val else 0)
    if use_pool_val:
        x_val, y_val = x_pool[val_idx], y_pool[val_idx]
        if x_val.shape[0] == 0:
            raise ValueError("no pool examples are left for l2 selection after sampling the shots; pass "
                             "val_feats/val_labels, a smaller shot count, or l2_selection='test'")
    elif not explicit_val:
        x_val, y_val = x_pool[:0], y_pool[:0]

    results = {}
    for k, idx in sets.items():
        x, y = x_pool[idx], y_pool[idx]
        mean, std = _standardizer(x)
        solver = RidgeSolver((x - mean) / std, pm1_targets(y, num_classes))
        test_accs = _grid_accuracies(solver, (x_test - mean) / std, y_test, grid)
        val_accs = _grid_accuracies(solver, (x_val - mean) / std, y_val, grid)
        l2 = _pick_l2(grid, test_accs if l2_selection == "test" else val_accs)
        pos = grid.index(l2)
        results[k] = {"accuracy": test_accs[pos], "l2": l2, "val_accuracy": val_accs[pos],
                      "num_train": int(len(idx)), "num_val": int(x_val.shape[0]), "l2_grid": list(grid),
                      "test_accuracy_per_l2": test_accs, "val_accuracy_per_l2": val_accs}
    return results


def select_l2_by_mean_rank(results_per_task: Mapping[str, Mapping[int, dict]],
                           key: str = "test_accuracy_per_l2") -> dict[int, float]:
    """V-MoE's cross-task rule (`_find_best_l2_reg`): per shot count, the l2 with the best mean accuracy rank.

    results_per_task: {task: fewshot_eval(...) output}, all with the same grid. Ranks within a task are 0 for the
    worst l2 (ties ranked by grid order, as `argsort(argsort(.))` does); the first l2 with the highest mean rank
    wins, as `np.argmax` does.
    """
    if not results_per_task:
        raise ValueError("results_per_task is empty")
    tasks = list(results_per_task.values())
    out = {}
    for k in tasks[0]:
        grid = tasks[0][k]["l2_grid"]
        ranks = []
        for task in tasks:
            if k not in task or task[k]["l2_grid"] != grid:
                raise ValueError(f"all tasks need shot count {k} evaluated on the same l2 grid")
            ranks.append(np.argsort(np.argsort(task[k][key], kind="stable"), kind="stable"))
        out[k] = float(grid[int(np.argmax(np.mean(ranks, axis=0)))])
    return out
