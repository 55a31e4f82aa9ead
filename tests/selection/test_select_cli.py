"""`sparsevision select` end to end on three checkpoints of known quality (see conftest.py): the proxies pick the
trained one, fine-tuning confirms it, regret follows the definition, and the greedy ensemble report is consistent.
Bad input fails at once with a message naming the problem."""
import json

import numpy as np
import pytest

from sparsevision.cli import main
from sparsevision.selection.ensemble import best_single, evaluate_ensemble
from sparsevision.selection.tuning import FinetunedCandidate

QUICK = ["--data", "digits", "--max-train-examples", "400", "--no-progress"]
QUICK_FINETUNE = ["--steps-scale", "0.02", "--finetune-batch-size", "64"]  # 10 SGD steps per candidate


def test_select_picks_the_best_checkpoint_and_builds_an_ensemble(quality_pool, tmp_path, capsys):
    specs = list(quality_pool.values())
    upstream = tmp_path / "upstream.json"  # a declared score that (wrongly) prefers the untrained model
    upstream.write_text(json.dumps({"trained": 0.5, "noisy.safetensors": 0.6, "untrained.safetensors": 0.9}))
    out = tmp_path / "out"
    code = main(["select", "--candidates", *specs, *QUICK, "--proxy", "knn", "linear", "upstream",
                 "--upstream-scores", str(upstream), "--ground-truth", "finetune", "--regret", *QUICK_FINETUNE,
                 "--ensemble", "--top-k", "2", "--max-members", "4", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "knn ranking: trained >" in printed and "regret@1" in printed and "best single" in printed

    report = json.loads((out / "selection.json").read_text())
    truth = report["ground_truth"]["test_accuracy"]
    # Fine-tuning confirms the intended order of quality ...
    assert truth["trained"] > truth["noisy.safetensors"] > truth["untrained.safetensors"]
    # ... and both task-aware proxies pick the trained checkpoint: no regret.
    for proxy in ("knn", "linear"):
        assert report["proxies"][proxy]["pick"] == "trained"
        assert report["regret"][proxy]["absolute"] == 0.0 and report["regret"][proxy]["relative"] == 0.0
    # The task-agnostic ranking follows the declared scores; its regret by hand from the ground truth.
    assert report["proxies"]["upstream"]["ranking"] == ["untrained.safetensors", "noisy.safetensors", "trained"]
    up = report["regret"]["upstream"]
    best, got = truth["trained"], truth["untrained.safetensors"]
    assert up["pick"] == "untrained.safetensors" and up["best"] == "trained"
    assert up["absolute"] == pytest.approx(best - got)
    assert up["relative"] == pytest.approx((best - got) / best)
    assert (out / "selection.png").stat().st_size > 1000

    ens = json.loads((out / "ensemble.json").read_text())
    assert ens["top_k"] == report["proxies"]["knn"]["ranking"][:2]
    assert [run["candidate"] for run in ens["pool"]] == ens["top_k"]
    path = ens["ensemble"]["val_loss_path"]
    assert 1 <= len(path) <= 4 and all(b < a for a, b in zip(path, path[1:]))
    assert sum(ens["ensemble"]["weights"].values()) == pytest.approx(1.0)
    # The first greedy pick has the lowest validation cross-entropy of the pool, so the ensemble never starts
    # worse on validation than the best single model by validation accuracy.
    assert path[0] == pytest.approx(min(run["val_nll"] for run in ens["pool"]))
    assert path[-1] <= ens["best_single"]["val_nll"] + 1e-12
    # The pool runs are the very runs that gave the ground truth (fine-tuned once, reused).
    for run in ens["pool"]:
        assert run["test_accuracy"] == pytest.approx(truth[run["candidate"]])
    assert ens["gain"]["test_accuracy"] == pytest.approx(ens["ensemble"]["test_accuracy"]
                                                         - ens["best_single"]["test_accuracy"])
    assert (out / "ensemble.png").stat().st_size > 1000


def test_select_with_a_ground_truth_file_and_budget(quality_pool, tmp_path, capsys):
    specs = list(quality_pool.values())
    truth_file = tmp_path / "truth.json"
    # Keys may be the candidate's name or the path as given; here the noisy model is (declared) best.
    truth_file.write_text(json.dumps({quality_pool["trained"]: 0.80, "noisy.safetensors": 0.90,
                                      "untrained.safetensors": 0.20}))
    out = tmp_path / "out"
    assert main(["select", "--candidates", *specs, *QUICK, "--ground-truth", str(truth_file), "--regret",
                 "--budget", "2", "--out", str(out)]) == 0
    report = json.loads((out / "selection.json").read_text())
    ranking = report["proxies"]["knn"]["ranking"]
    assert ranking[0] == "trained"
    r = report["regret"]["knn"]
    # regret@2: the better of the two top-ranked by declared accuracy.
    top2 = {n: {"trained": 0.80, "noisy.safetensors": 0.90, "untrained.safetensors": 0.20}[n] for n in ranking[:2]}
    assert r["pick_accuracy"] == max(top2.values())
    assert r["absolute"] == pytest.approx(0.90 - max(top2.values()))
    assert r["relative"] == pytest.approx((0.90 - max(top2.values())) / 0.90)
    assert report["ground_truth"]["source"] == str(truth_file)
    assert (out / "selection.png").is_file()


def test_proxies_without_ground_truth_write_a_bar_plot(quality_pool, tmp_path):
    out = tmp_path / "bars"
    specs = [quality_pool["trained"], quality_pool["untrained.safetensors"]]
    assert main(["select", "--candidates", *specs, *QUICK, "--knn-mode", "holdout", "--upstream-metric",
                 "test.accuracy", "--out", str(out)]) == 0
    report = json.loads((out / "selection.json").read_text())
    assert report["ground_truth"] is None and report["regret"] is None
    assert report["proxies"]["knn"]["pick"] == "trained"
    assert (out / "selection.png").stat().st_size > 1000


@pytest.mark.parametrize("argv,message", [
    (["--candidates", "only_one"], "at least two candidates"),
    (["--candidates", "a", "b", "--proxy", "magic"], "unknown proxy 'magic'"),
    (["--candidates", "a", "b", "--proxy", "upstream"], "needs --upstream-scores"),
    (["--candidates", "a", "b", "--regret"], "--regret needs --ground-truth"),
    (["--candidates", "a", "b", "--ensemble", "--top-k", "3"], "--top-k must be between 1 and"),
    (["--candidates", "a", "b", "--lrs", "0.1,x"], "--lrs must be numbers"),
])
def test_bad_arguments_fail_with_a_named_error(argv, message, capsys):
    assert main(["select", *argv, "--data", "digits", "--no-progress"]) == 1
    assert message in capsys.readouterr().err


def test_missing_upstream_score_is_named(quality_pool, tmp_path, capsys):
    scores = tmp_path / "up.json"
    scores.write_text(json.dumps({"trained": 0.5}))
    specs = [quality_pool["trained"], quality_pool["noisy.safetensors"]]
    assert main(["select", "--candidates", *specs, *QUICK, "--proxy", "upstream", "--upstream-scores",
                 str(scores)]) == 1
    err = capsys.readouterr().err
    assert "no upstream score for candidate" in err and "noisy.safetensors" in err
    # A checkpoint outside any run has no metrics to read an upstream score from.
    assert main(["select", "--candidates", *specs, *QUICK, "--proxy", "upstream", "--upstream-metric",
                 "test.accuracy"]) == 1
    assert "not inside a training run" in capsys.readouterr().err


def fake_run(name, lr, val_probs, test_probs, val_labels, test_labels):
    return FinetunedCandidate(name, lr, np.log(np.asarray(val_probs)), np.asarray(val_labels),
                              np.log(np.asarray(test_probs)), np.asarray(test_labels))


def test_evaluate_ensemble_by_hand():
    # Two runs that are each right on half of the examples: together (equal weights) they are right everywhere.
    yv, yt = np.array([0, 1, 0, 1]), np.array([1, 0])
    a = fake_run("a", 0.01, [[.9, .1], [.6, .4], [.9, .1], [.6, .4]], [[.4, .6], [.6, .4]], yv, yt)
    b = fake_run("b", 0.01, [[.4, .6], [.1, .9], [.4, .6], [.1, .9]], [[.45, .55], [.3, .7]], yv, yt)
    c = fake_run("a", 0.1, [[.5, .5]] * 4, [[.5, .5]] * 2, yv, yt)  # a second lr of "a": uninformative
    report, greedy = evaluate_ensemble([a, b, c], max_members=3)
    assert greedy.members[:2] in ([0, 1], [1, 0])
    assert report["ensemble"]["weights"] == {"a@lr=0.01": 0.5, "b": 0.5}
    # Test probabilities of the ensemble: mean of a and b -> [[.425, .575], [.45, .55]]; labels [1, 0].
    assert report["ensemble"]["test_accuracy"] == 0.5
    assert report["ensemble"]["test_nll"] == pytest.approx(-(np.log(.575) + np.log(.45)) / 2)
    # Best single by validation accuracy: a and b both 0.5; the tie goes to the lower validation NLL.
    nll = {k: -np.mean([np.log(p[y]) for p, y in zip(v, yv)]) for k, v in
           {"a": [[.9, .1], [.6, .4], [.9, .1], [.6, .4]], "b": [[.4, .6], [.1, .9], [.4, .6], [.1, .9]]}.items()}
    assert best_single([a, b, c]) == (0 if nll["a"] <= nll["b"] else 1)
    with pytest.raises(ValueError, match="different examples"):
        evaluate_ensemble([a, fake_run("d", 0.01, [[.5, .5]] * 4, [[.5, .5]] * 2, yv[::-1], yt)])
