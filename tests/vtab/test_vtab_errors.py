"""`sparsevision vtab` refuses an empty task list and bad caps in one line, before any model or data work."""
import pytest

from sparsevision.cli import main
from sparsevision.vtab.tasks import select_tasks


def test_empty_task_list_is_an_error_not_missing_data():
    with pytest.raises(ValueError, match="tasks ' , ' names no vtab-lite task \\(tasks: digits, textures"):
        select_tasks("vtab-lite", " , ")
    assert [t.name for t in select_tasks("vtab-lite", "textures,digits")] == ["digits", "textures"]


def test_test_examples_checked_before_the_model(tmp_path, capsys):
    assert main(["vtab", "--model", str(tmp_path / "no_run"), "--suite", "vtab-lite", "--mode", "fewshot",
                 "--test-examples", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "sparsevision vtab: error: --test-examples must be >= 1, got 0"
