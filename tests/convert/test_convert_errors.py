"""`sparsevision convert` on unreadable or mismatched sources: one line naming the file and the way out."""
import pytest
import torch

import sparsevision
from sparsevision.cli import main
from sparsevision.convert.timm import read_state_dict
from sparsevision.train.checkpoint import save_model_weights


def _cli_error(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    return err


@pytest.mark.parametrize("name", ["junk.safetensors", "junk.pth", "junk.npz"])
def test_unreadable_source_is_named(tmp_path, capsys, name):
    src = tmp_path / name
    src.write_bytes(b"{\"not\": \"weights\"}")
    err = _cli_error(capsys, ["convert", str(src), str(tmp_path / "out.safetensors"), "--model", "vit_tiny_test"])
    assert f"{src} is not a readable" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out.safetensors").exists()


def test_pickled_non_mapping_is_refused(tmp_path):
    src = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], src)
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        read_state_dict(src)


def test_mismatch_points_to_non_strict_flag(tmp_path, capsys):
    src = tmp_path / "vit.safetensors"
    save_model_weights(sparsevision.create_model("vit_tiny_test", num_classes=3), src)
    err = _cli_error(capsys, ["convert", str(src), str(tmp_path / "out.safetensors"), "--model", "vit_tiny_test"])
    assert "head.weight" in err and "--non-strict" in err
    assert main(["convert", str(src), str(tmp_path / "out.safetensors"), "--model", "vit_tiny_test",
                 "--non-strict"]) == 0
