"""scripts/derive_seg_model.py: a new version with a model's weights and other post-processing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from napari_histo.core.seg import registry as models
from napari_histo.core.seg.spec import get_arch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "derive_seg_model.py"


def _script(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("derive_seg_model", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(script, "RUNS", tmp_path / "runs")
    return script


def test_the_new_version_has_the_weights_the_settings_and_no_old_figures(tmp_path, monkeypatch):
    script = _script(tmp_path, monkeypatch)
    torch.manual_seed(0)
    net = get_arch("unet").build(base=4).eval()
    card = {
        "name": "m",
        "data": "tiles",
        "license": "CC BY-NC-SA 4.0",
        "command": "cmd m",
        "parent": "p",
        "parent_command": "cmd p",
        "mpp": 0.25,
        "inference": {"relative_min_size": 0.3, "chosen_by": "earlier"},
        "validation": {"aji": 0.6},
        "validation_20x_mpp_given": {"aji": 0.5},
        "validation_split": "slides held out",
    }
    models.save_model(tmp_path / "m", net, "unet", {"base": 4}, card)
    settings = {"relative_cap": 130, "chosen_by": "cross-validation"}

    assert (
        script.main([str(tmp_path / "m"), "--name", "m2", "--inference", json.dumps(settings)]) == 0
    )
    out = tmp_path / "runs" / "m2"
    new = json.loads((out / "card.json").read_text())
    assert new["name"] == "m2" and new["parent"] == "m" and new["parent_command"] == "cmd m"
    assert new["inference"] == {"relative_min_size": 0.3, **settings}
    # Figures measured with the old post-processing are not carried; the split and data are.
    assert "validation" not in new and "validation_20x_mpp_given" not in new
    assert new["validation_split"] == "slides held out" and new["mpp"] == 0.25
    # The old version's own parent stays traceable once the old folder is retired.
    assert new["ancestors"][-1]["command"] == "cmd p"
    assert "derive_seg_model.py" in new["command"]
    w = models.read_weights(out / "weights.safetensors")[0]
    assert all(torch.equal(w[k], v) for k, v in net.state_dict().items() if k in w)
    loaded = models.load_model(out, "cpu")
    assert loaded.spec.relative_cap == 130 and loaded.spec.relative_min_size == 0.3


def test_settings_without_a_reason_are_refused(tmp_path, monkeypatch):
    script = _script(tmp_path, monkeypatch)
    models.save_model(tmp_path / "m", get_arch("unet").build(base=4), "unet", {"base": 4}, {})
    with pytest.raises(SystemExit):
        script.main([str(tmp_path / "m"), "--name", "x", "--inference", '{"relative_cap": 90}'])
    assert not (tmp_path / "runs" / "x").exists()
