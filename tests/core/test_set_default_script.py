"""scripts/train_seg_default.py --make-default: pointing "default" at a model, and retiring the last."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_seg_default.py"


@pytest.fixture
def script(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("train_seg_default", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name in ("old", "new"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights.safetensors").write_bytes(b"")
    reg = {"default": "old", "retired": {"older": "old"}}
    (tmp_path / "registry.json").write_text(json.dumps(reg))
    monkeypatch.setattr(mod, "SEG_DIR", tmp_path)
    return mod


def test_make_default_keeps_the_previous_model_unless_told(script, tmp_path):
    script.main(["--make-default", "new"])
    reg = json.loads((tmp_path / "registry.json").read_text())
    assert reg["default"] == "new" and reg["retired"] == {"older": "old"}
    assert (tmp_path / "old" / "weights.safetensors").is_file()


def test_retire_previous_records_the_successor_and_removes_the_folder(script, tmp_path):
    script.main(["--make-default", "new", "--retire-previous"])
    reg = json.loads((tmp_path / "registry.json").read_text())
    assert reg["default"] == "new"
    assert reg["retired"] == {"older": "old", "old": "new"}
    assert not (tmp_path / "old").exists() and (tmp_path / "new").is_dir()


def test_make_default_refuses_a_model_that_is_not_shipped(script, tmp_path):
    with pytest.raises(SystemExit, match="no shipped model 'gone'"):
        script.main(["--make-default", "gone", "--retire-previous"])
    assert json.loads((tmp_path / "registry.json").read_text())["default"] == "old"
    assert (tmp_path / "old").is_dir()
