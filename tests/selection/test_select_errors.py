"""`sparsevision select` names missing candidates at once, before any candidate's features are extracted."""
from sparsevision.cli import main


def test_missing_candidates_listed_before_any_work(tmp_path, capsys):
    present = tmp_path / "present_run"
    present.mkdir()  # exists but is not loaded: the missing ones must be reported first
    assert main(["select", "--candidates", str(present), str(tmp_path / "gone_a"), "gone_b",
                 "--data", "digits", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"sparsevision select: error: candidate(s) not found: {tmp_path / 'gone_a'}, gone_b (each must "
                   f"be a run directory, checkpoint directory or .safetensors file)")
