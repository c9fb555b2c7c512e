"""Model registry (save, load, cache, refusal of foreign files) and the training loop."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_histo.core.errors import HistoError  # noqa: E402
from napari_histo.core.io import read_image, read_labels, write_image, write_labels  # noqa: E402
from napari_histo.core.progress import drain  # noqa: E402
from napari_histo.core.seg import registry as models  # noqa: E402
from napari_histo.core.seg.inference import segment_iter  # noqa: E402
from napari_histo.core.seg.spec import get_arch  # noqa: E402
from napari_histo.core.seg.train import (  # noqa: E402
    PatchSampler,
    load_pairs,
    split_validation,
    train_iter,
)

NAMES = ["TCGA-A7-A13E-01Z-00-DX1", "TCGA-B0-5710-01Z-00-DX1", "TCGA-21-5784-01Z-00-DX1"]
FAST = {
    "arch_kwargs": {"base": 4},
    "patch": 64,
    "batch_size": 2,
    "steps_per_epoch": 2,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def pairs(monuseg):
    out = []
    for n in NAMES:
        img = read_image(monuseg / "images" / f"{n}.png")[:160, :160]
        lab = read_labels(monuseg / "masks" / f"{n}.tif")[:160, :160]
        out.append((n, img, lab))
    return out


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    spec = get_arch("unet")
    torch.manual_seed(0)
    net = spec.build(base=4).eval()
    folder = tmp_path_factory.mktemp("models") / "tiny"
    models.save_model(folder, net, "unet", {"base": 4}, {"data": "none", "license": "BSD-3-Clause"})
    return folder, net


def test_save_load_roundtrip(saved):
    folder, net = saved
    assert {p.name for p in folder.iterdir()} == {"weights.safetensors", "card.json", "card.md"}
    card = json.loads((folder / "card.json").read_text())
    assert card["arch"] == "unet" and card["kwargs"] == {"base": 4}
    assert card["format"] == models.FORMAT and card["input"]["mean"] == [0.485, 0.456, 0.406]
    assert card["license"] == "BSD-3-Clause" and card["created"] > 0
    assert "unet" in (folder / "card.md").read_text()
    m = models.load_model(folder, "cpu")
    assert m.arch == "unet" and m.card["name"] == "tiny" and not m.net.training
    for (k, a), (k2, b) in zip(net.state_dict().items(), m.net.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), m.net(x))
    # The weights file itself is a valid reference too.
    assert models.load_model(folder / "weights.safetensors", "cpu") is m


def test_load_is_cached_until_the_file_changes(saved):
    folder, _ = saved
    a = models.load_model(folder, "cpu")
    assert models.load_model(str(folder), "cpu") is a
    w = folder / "weights.safetensors"
    st = w.stat()
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    b = models.load_model(folder, "cpu")
    assert b is not a


def test_foreign_files_are_refused_in_one_line(tmp_path):
    from safetensors.torch import save_file

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "weights.safetensors").write_bytes(b"\x00\x01 not safetensors at all")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    pickled = tmp_path / "model.pth"
    pickled.write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    for ref, match in (
        (garbage, "not a readable safetensors"),
        (foreign, "not a napari-histo segmentation model"),
        (pickled, "not a readable safetensors"),
        (empty, "no weights.safetensors"),
        (tmp_path / "missing", "no such segmentation model"),
        ("no_such_shipped_name", "no such segmentation model"),
        # Retired in the shipped registry.json: the message names the model shipped today.
        ("hovernet_shared_v2", "no longer shipped; hovernet_shared_v10 superseded it"),
        ("unet_histo80", "no longer shipped; unet_histo80_v2 superseded it"),
    ):
        with pytest.raises(HistoError, match=match) as info:
            models.load_model(ref, "cpu")
        assert "\n" not in str(info.value)


def test_weights_that_do_not_fit_are_refused(tmp_path, saved):
    folder, net = saved
    bad = tmp_path / "bad"
    models.save_model(bad, net, "unet", {"base": 8})
    with pytest.raises(HistoError, match="do not fit"):
        models.load_model(bad, "cpu")


def test_list_models_and_resolve(tmp_path, saved):
    folder, net = saved
    user = tmp_path / "user"
    models.save_model(user / "v1", net, "unet", {"base": 4}, {"created": 100.0})
    models.save_model(user / "v2", net, "unet", {"base": 4}, {"created": 200.0})
    (user / ".v3.partial").mkdir()
    (user / "notes").mkdir()
    infos = models.list_models(user)
    mine = [i for i in infos if not i.shipped]
    assert [i.name for i in mine] == ["v2", "v1"]
    assert all(i.arch == "unet" and os.path.isdir(i.ref) for i in mine)
    shipped = [i for i in infos if i.shipped]
    assert infos[: len(shipped)] == shipped
    if models.default_model_name():
        assert shipped[0].default
        assert models.resolve_model("default") == models.resolve_model(shipped[0].name)
    assert models.resolve_model(folder / "weights.safetensors") == folder
    assert models.list_models(user, shipped_only=True) == shipped


def test_importing_the_registry_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, napari_histo.core.seg.registry, napari_histo.core.seg.train, napari_histo.core.tiling; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


# ----------------------------------------------------------------------------- data


def test_shipped_cards_trace_back_to_a_command_from_scratch():
    """A continued model's card keeps every generation's command (a retired parent's card is
    gone from the repository), back to one that starts from scratch; card.md shows them (and
    the card's inference settings)."""
    import re

    from napari_histo.core.weights import card_markdown

    folders = [p for p in sorted(models.shipped_dir().iterdir()) if (p / "card.json").is_file()]
    assert any(f.name.startswith("hovernet") for f in folders)
    for folder in folders:
        card = json.loads((folder / "card.json").read_text())
        chain = [a["command"] for a in card.get("ancestors", [])]
        if card.get("parent_command"):
            chain.append(card["parent_command"])
        chain.append(card["command"])
        first = re.search(r"--init (\S+)", chain[0])
        assert first is None or first.group(1) == "none", (
            f"{folder.name}: lineage stops at {chain[0]!r}"
        )
        text = card_markdown(card)
        assert all(cmd in text for cmd in chain), folder.name
        # How the command was really run (environment, a resumed run) is shown beside it.
        assert card.get("command_note", "") in text, folder.name
        # Post-processing settings that differ from the architecture's are shown too.
        for key, value in (card.get("inference") or {}).items():
            if isinstance(value, int | float):
                shown = f"{value:.4g}" if isinstance(value, float) else str(value)
                assert f"{key}={shown}" in text, (folder.name, key)


def test_load_pairs_matches_by_stem_and_names_bad_files(tmp_path, pairs):
    images, masks = tmp_path / "images", tmp_path / "masks"
    for n, img, lab in pairs[:2]:
        write_image(images / f"{n}.png", img)
        write_labels(masks / f"{n}.tif", lab)
    got = load_pairs(images, masks)
    assert [g[0] for g in got] == sorted(NAMES[:2])
    write_labels(masks / f"{NAMES[0]}.tif", pairs[0][2][:100])
    with pytest.raises(HistoError, match=f"{NAMES[0]}.tif: mask size"):
        load_pairs(images, masks)
    write_image(images / "lonely.png", pairs[0][1])
    (masks / f"{NAMES[0]}.tif").unlink()
    with pytest.raises(HistoError, match="no mask"):
        load_pairs(images, masks)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HistoError, match="no images"):
        load_pairs(empty, masks)
    with pytest.raises(HistoError, match="not a folder"):
        load_pairs(tmp_path / "nope", masks)


def test_split_validation(pairs):
    train, val = split_validation(pairs, 0.34, seed=0)
    assert len(train) == 2 and len(val) == 1
    assert {p[0] for p in train} | {p[0] for p in val} == set(NAMES)
    one_train, one_val = split_validation(pairs[:1], 0.4)
    assert one_train[0][1].shape[0] + one_val[0][1].shape[0] == 160
    assert split_validation(pairs, 0.0) == (pairs, [])


def test_patch_sampler_gives_consistent_targets(pairs):
    spec = get_arch("unet")
    sampler = PatchSampler(pairs, spec, 64)
    rng = np.random.default_rng(0)
    img, targets = sampler.sample(rng)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert targets["ternary"].shape == (64, 64)
    x, t = sampler.batch(rng, 3, "cpu")
    assert tuple(x.shape) == (3, 3, 64, 64) and tuple(t["ternary"].shape) == (3, 64, 64)
    # Small images are padded, not refused.
    small = PatchSampler([("s", pairs[0][1][:20, :30], pairs[0][2][:20, :30])], spec, 64)
    assert small.sample(rng)[0].shape == (64, 64, 3)


def test_elastic_deformation_moves_labels_with_their_nuclei(pairs, monkeypatch):
    """The warp bends nuclei (labels change) but the labels stay on the pixels they label."""
    from scipy import ndimage as ndi

    from napari_histo.core.seg.train.data import elastic_deform, elastic_field

    _, img, lab = pairs[0]
    rng = np.random.default_rng(1)
    field = elastic_field(lab.shape, rng)
    assert field.shape == (2, *lab.shape)
    assert np.abs(field).max() == pytest.approx(6.0, rel=1e-4)
    # A picture drawn from the labels (nuclei bright, everything else dark) warped beside them.
    drawn = np.repeat(np.where(lab > 0, 220, 30).astype(np.uint8)[..., None], 3, axis=-1)
    warped, wlab = elastic_deform(drawn, lab, field)
    assert wlab.dtype == lab.dtype and set(np.unique(wlab)) <= set(np.unique(lab))
    assert (wlab != lab).mean() > 0.02  # it did deform
    agree = ((warped[..., 0] > 125) == (wlab > 0)).mean()
    assert agree > 0.99, agree
    # No nucleus is cut in two: each id keeps one connected piece (or vanishes off the edge).
    pieces = [ndi.label(wlab == i)[1] for i in np.unique(wlab)[1:]]
    assert max(pieces) == 1
    # The sampler warps each patch with probability ``elastic``, before making the targets.
    from napari_histo.core.seg.train import data

    calls = []

    def spy(image, labels, field):
        calls.append(image.shape)
        return elastic_deform(image, labels, field)

    monkeypatch.setattr(data, "elastic_deform", spy)
    spec = get_arch("unet")
    rng = np.random.default_rng(3)
    for p, expected in ((0.0, 0), (1.0, 6)):
        calls.clear()
        sampler = PatchSampler(pairs[:1], spec, 64, elastic=p)
        for _ in range(6):
            img_t, targets = sampler.sample(rng)
            assert img_t.shape == (64, 64, 3) and targets["ternary"].shape == (64, 64)
        assert len(calls) == expected
    assert calls[0] == (64 + 2 * PatchSampler.margin,) * 2 + (3,)


def test_patch_sampler_draws_around_the_focus(pairs):
    """With a focus mask (the corrections), patches are drawn around it; without, anywhere."""
    spec = get_arch("unet")
    name, img, lab = pairs[0]
    lab = lab.copy()
    corner = lab[120:, 120:].copy()
    lab[:] = 0
    lab[120:, 120:] = corner  # nuclei only in one corner of the 160 px crop
    focus = lab > 0  # e.g. the nuclei a user redrew

    def share_with_nuclei(sampler):
        rng = np.random.default_rng(0)
        return np.mean([(sampler.sample(rng)[1]["ternary"] > 0).any() for _ in range(40)])

    plain = PatchSampler([(name, img, lab)], spec, 32, augment=False)
    focused = PatchSampler(
        [(name, img, lab)], spec, 32, augment=False, focus=[focus], focus_share=1.0
    )
    assert share_with_nuclei(focused) == 1.0
    assert share_with_nuclei(plain) < 0.5
    with pytest.raises(ValueError, match="focus masks"):
        PatchSampler([(name, img, lab)], spec, 32, focus=[focus, focus])


# ----------------------------------------------------------------------------- training


def test_train_writes_a_loadable_model_with_progress_and_card(tmp_path, pairs):
    out = tmp_path / "m"
    events = []
    folder = drain(
        train_iter(pairs[:2], out=out, init="none", epochs=2, val_pairs=pairs[2:], seed=3, lr=1e-3, **FAST),
        events.append,
    )  # fmt: skip
    assert folder == out and out.is_dir()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    steps = [e for e in events if e.stage == "step"]
    epochs = [e for e in events if e.stage == "epoch"]
    assert len(steps) == 4 and steps[-1].step == steps[-1].total == 4
    assert len(epochs) == 2 and "val_aji" in epochs[-1].metrics and "loss" in epochs[-1].metrics
    card = json.loads((out / "card.json").read_text())
    assert card["arch"] == "unet" and card["kwargs"] == {"base": 4}
    assert card["training"]["seed"] == 3 and card["training"]["lr"] == 1e-3
    assert card["training"]["epochs_done"] == 2 and card["parent"] is None
    assert card["validation_pairs"] == [NAMES[2]] and "aji" in card["validation"]
    assert len(card["history"]) == 2
    assert (out / "train_state.safetensors").is_file()
    m = models.load_model(out, "cpu")
    res = drain(segment_iter(pairs[2][1], m))
    assert res.labels.shape == (160, 160)


def test_fine_tune_keeps_arch_and_carries_the_licence(tmp_path, pairs, saved):
    parent, _ = saved
    out = tmp_path / "ft"
    drain(train_iter(pairs[:1], out=out, init=str(parent), epochs=1, val_fraction=0, **FAST))
    card = json.loads((out / "card.json").read_text())
    assert card["parent"] == "tiny" and card["arch"] == "unet" and card["kwargs"] == {"base": 4}
    assert "BSD-3-Clause" in card["license"]
    with pytest.raises(HistoError, match="keeps its architecture"):
        drain(train_iter(pairs[:1], out=tmp_path / "x", init=str(parent), arch="hovernet", **FAST))
    assert not (tmp_path / "x").exists()


def _interrupt_after_first_epoch(gen) -> None:
    """Run a training generator to its first epoch, then Ctrl-C it (the work folder stays)."""
    for ev in gen:
        if ev.stage == "epoch":
            break
    with pytest.raises(KeyboardInterrupt):
        gen.throw(KeyboardInterrupt)


def test_fine_tunes_keep_every_generation_on_the_card(tmp_path, pairs, saved):
    """A grandchild's card leads back to the grandparent's command, through a resume too, and
    keeps the pixel size and post-processing it segments with."""
    parent, _ = saved
    grand = tmp_path / "grand"
    shutil.copytree(parent, grand)
    card0 = json.loads((grand / "card.json").read_text())
    settings = {"mpp": 0.25, "inference": {"min_size": 12}}
    guess = {"area_px": 240, "max_factor": 2.0, "how": "chosen on grand's training tiles"}
    card0 = {**card0, "name": "grand", "command": "cmd 0", **settings, "scale_guess": guess}
    (grand / "card.json").write_text(json.dumps(card0))
    child = tmp_path / "child"
    one = dict(epochs=1, val_fraction=0, **FAST)
    drain(train_iter(pairs[:1], out=child, init=str(grand), card={"command": "cmd 1"}, **one))
    c1 = json.loads((child / "card.json").read_text())
    assert c1["name"] == "child" and c1["parent"] == "grand"
    assert c1["minutes"] == round(c1["training"]["seconds"] / 60, 1)
    assert c1["parent_command"] == "cmd 0" and "ancestors" not in c1
    assert {k: c1.get(k) for k in settings} == settings
    # The magnification guess's area is kept, and the card says whose calibration it is.
    assert c1["scale_guess"]["area_px"] == 240
    assert c1["scale_guess"]["how"].startswith("inherited from grand, whose area this is")
    # The grandchild is interrupted after its first epoch and resumed: the lineage survives.
    out = tmp_path / "gc"
    kw = dict(out=out, init=str(child), val_fraction=0, **FAST)
    _interrupt_after_first_epoch(train_iter(pairs[:1], epochs=2, **kw))
    drain(train_iter(pairs[:1], epochs=2, resume=True, **kw))
    c2 = json.loads((out / "card.json").read_text())
    assert c2["training"]["epochs_done"] == 2 and c2["parent"] == "child"
    assert c2["parent_command"] == "cmd 1"
    assert c2["parent_training"]["epochs_done"] == 1
    assert [(a["name"], a["command"]) for a in c2["ancestors"]] == [("grand", "cmd 0")]
    assert {k: c2.get(k) for k in settings} == settings
    assert c2["scale_guess"] == c1["scale_guess"]  # still grand's, not the child's
    assert "cmd 0" in (out / "card.md").read_text()


def test_fine_tune_validates_with_the_parents_inference_settings(tmp_path, pairs):
    """Each epoch is scored as the model will segment: with the post-processing settings its
    card inherits (here a minimum size that drops every object)."""
    one = {"epochs": 1, "patch": 64, "batch_size": 2, "steps_per_epoch": 2, "device": "cpu"}
    scores = {}
    for tag, inference in (("as shipped", None), ("nothing kept", {"min_size": 10**9})):
        parent = tmp_path / tag
        shutil.copytree(models.resolve_model("default"), parent)
        if inference:
            card = json.loads((parent / "card.json").read_text())
            (parent / "card.json").write_text(json.dumps({**card, "inference": inference}))
        out = tmp_path / f"{tag} child"
        drain(train_iter(pairs[:1], out=out, init=str(parent), val_pairs=pairs[1:2], **one))
        card = json.loads((out / "card.json").read_text())
        scores[tag] = card["validation"]["aji"]
        if inference:
            assert card["inference"] == inference
    # The shipped default's settings: AJI 0.58 on this crop after two steps.
    assert scores["as shipped"] > 0.3 and scores["nothing kept"] == 0.0, scores


def test_fine_tune_focus_and_loss_plateau(tmp_path, pairs, saved):
    """Fine-tuning can sample where the labels differ from the parent and stop on a flat loss."""
    parent, _ = saved
    out = tmp_path / "ft"
    events = []
    drain(
        train_iter(pairs[:2], out=out, init=str(parent), epochs=50, val_fraction=0, lr=1e-6,
                   focus=True, loss_patience=2, **FAST),
        events.append,
    )  # fmt: skip
    assert [e.step for e in events if e.stage == "corrections"][-1] == 2
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["focus"].startswith("half the patches")
    # lr 1e-6 leaves the loss flat: stopped long before the 50 epochs
    assert card["training"]["stopped"].startswith("early stop: training loss flat")
    assert card["training"]["epochs_done"] < 50


def test_monuseg_licence_is_carried(tmp_path, pairs):
    out = tmp_path / "mn"
    drain(
        train_iter(
            pairs[:1], out=out, init="none", epochs=1, val_fraction=0, data="MoNuSeg crops", **FAST
        )
    )
    assert "CC BY-NC-SA 4.0" in json.loads((out / "card.json").read_text())["license"]


def test_cancel_leaves_no_model_folder(tmp_path, pairs):
    out = tmp_path / "cancelled"
    gen = train_iter(pairs[:2], out=out, init="none", epochs=3, val_pairs=pairs[2:], **FAST)
    ev = next(gen)
    assert ev.stage == "step"
    gen.close()
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_is_not_overwritten(tmp_path, pairs):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(HistoError, match="already exists"):
        drain(train_iter(pairs[:1], out=out, init="none", **FAST))
    assert (out / "keep.txt").read_text() == "mine"


def test_resume_after_an_interrupt_and_extend_a_finished_model(tmp_path, pairs):
    out = tmp_path / "r"
    kw = dict(out=out, init="none", val_pairs=pairs[2:], seed=1, **FAST)
    _interrupt_after_first_epoch(train_iter(pairs[:2], epochs=3, **kw))
    work = tmp_path / ".r.partial"
    assert work.is_dir() and not out.exists()  # kept for resuming, not a model yet
    events = []
    drain(train_iter(pairs[:2], epochs=3, resume=True, **kw), events.append)
    assert [e.step for e in events if e.stage == "epoch"] == [2, 3]
    assert not work.exists()
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["epochs_done"] == 3 and card["training"]["steps_done"] == 6
    assert [h["epoch"] for h in card["history"]] == [1, 2, 3]
    # A finished model continues to more epochs.
    drain(train_iter(pairs[:2], epochs=4, resume=True, **kw))
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["epochs_done"] == 4 and len(card["history"]) == 4
    with pytest.raises(HistoError, match="nothing to resume"):
        drain(train_iter(pairs[:2], epochs=1, resume=True, **{**kw, "out": tmp_path / "none"}))


def _digests(folder):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_cancelled_fine_tune_leaves_the_parent_byte_identical(tmp_path, pairs, saved):
    parent, _ = saved
    before = _digests(parent)
    gen = train_iter(pairs[:2], out=tmp_path / "ft", init=str(parent), epochs=3, **FAST)
    for ev in gen:
        if ev.stage == "epoch":
            break
    gen.close()
    assert _digests(parent) == before
    assert not (tmp_path / "ft").exists()


@pytest.mark.slow
def test_a_save_killed_mid_write_leaves_a_loadable_model(tmp_path, saved):
    """SIGKILL while a model is being rewritten again and again: the folder always loads."""
    import signal
    import subprocess
    import sys
    import time

    _, net = saved
    folder = tmp_path / "m"
    models.save_model(folder, net, "unet", {"base": 4}, {"data": "none"})
    good = {k: v.clone() for k, v in net.state_dict().items()}
    script = (
        "import torch\n"
        "from napari_histo.core.seg import registry as models\n"
        "from napari_histo.core.seg.spec import get_arch\n"
        "net = get_arch('unet').build(base=4)\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        f"    models.save_model({str(folder)!r}, net, 'unet', {{'base': 4}}, {{'data': 'none'}})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.5)  # many complete saves, then a kill at an arbitrary point of one
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    models.clear_model_cache()
    loaded = models.load_model(str(folder), "cpu")
    state = loaded.net.state_dict()
    assert set(state) == set(good)
    assert any(not torch.equal(state[k], good[k]) for k in good), "no save ever completed"


def test_moving_average_of_the_weights_is_validated_kept_and_resumed(tmp_path, pairs, saved):
    """With ``ema`` the model keeps the weights' moving average: after two steps at decay 0.99
    it lies about 2 % of the way from the parent to the last step's weights, and an
    interrupted run resumes its average (the same weights as a run left alone)."""
    parent, _ = saved
    start = models.read_weights(parent / "weights.safetensors")[0]

    def dist(folder):
        w = models.read_weights(folder / "weights.safetensors")[0]
        floats = [k for k in start if start[k].is_floating_point()]  # not the batch counts
        return sum(float((w[k] - start[k]).norm()) for k in floats)

    kw = dict(init=str(parent), val_pairs=pairs[2:], keep="last", lr=1e-2, seed=2, **FAST)
    drain(train_iter(pairs[:2], out=tmp_path / "raw", epochs=1, **kw))
    drain(train_iter(pairs[:2], out=tmp_path / "avg", epochs=1, ema=0.99, **kw))
    raw, avg = dist(tmp_path / "raw"), dist(tmp_path / "avg")
    assert 0.005 * raw < avg < 0.05 * raw, (raw, avg)
    card = json.loads((tmp_path / "avg" / "card.json").read_text())
    assert card["training"]["ema"] == 0.99
    assert "moving average" in card["validation"]["selected"]

    out = tmp_path / "resumed"
    _interrupt_after_first_epoch(train_iter(pairs[:2], out=out, epochs=2, ema=0.99, **kw))
    drain(train_iter(pairs[:2], out=out, epochs=2, ema=0.99, resume=True, **kw))
    drain(train_iter(pairs[:2], out=tmp_path / "whole", epochs=2, ema=0.99, **kw))
    a = models.read_weights(out / "weights.safetensors")[0]
    b = models.read_weights(tmp_path / "whole" / "weights.safetensors")[0]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    with pytest.raises(HistoError, match="ema must be a decay"):
        drain(train_iter(pairs[:2], out=tmp_path / "bad", ema=1.0, **kw))
