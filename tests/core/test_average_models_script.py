"""scripts/average_seg_models.py: the mean of a lineage's weights, with a card that segments as
its last ingredient does."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from napari_histo.core.seg import registry as models
from napari_histo.core.seg.spec import get_arch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "average_seg_models.py"


def test_the_average_keeps_the_weights_mean_and_the_last_ingredients_settings(
    tmp_path, monkeypatch
):
    spec = importlib.util.spec_from_file_location("average_seg_models", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(script, "RUNS", tmp_path / "runs")
    settings = {"hv_sigma": 2.5, "chosen_by": "training tiles"}
    nets = []
    for seed, name in ((0, "a"), (1, "b")):
        torch.manual_seed(seed)
        nets.append(get_arch("unet").build(base=4).eval())
        card = {
            "name": name,
            "data": "tiles",
            "license": "CC BY-NC-SA 4.0",
            "command": f"cmd {name}",
        }
        if name == "b":
            card.update(mpp=0.25, inference=settings, parent="a", parent_command="cmd a")
        models.save_model(tmp_path / name, nets[-1], "unet", {"base": 4}, card)

    assert script.main([str(tmp_path / "a"), str(tmp_path / "b"), "--name", "ab"]) == 0
    card = json.loads((tmp_path / "runs" / "ab" / "card.json").read_text())
    # What the soup segments with comes from its last ingredient, as a fine-tune's from its parent.
    assert card["inference"] == settings and card["mpp"] == 0.25
    assert card["license"] == "CC BY-NC-SA 4.0"
    assert [i["command"] for i in card["ingredients"]] == ["cmd a", "cmd b"]
    w = models.read_weights(tmp_path / "runs" / "ab" / "weights.safetensors")[0]
    a, b = (n.state_dict() for n in nets)
    key = next(k for k in w if w[k].is_floating_point() and not torch.equal(a[k], b[k]))
    assert torch.allclose(w[key], (a[key] + b[key]) / 2, atol=1e-6)
