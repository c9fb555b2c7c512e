"""Mask R-CNN (torchvision), trained from scratch, segmenting nuclei as instances.

The detector is torchvision's ``MaskRCNN`` on a ResNet-FPN backbone (ResNet-18 by default, for
CPU; no pretrained weights, BatchNorm instead of frozen BatchNorm since nothing is pretrained),
with small anchors for nuclei. Inference keeps its instances (``detector = True``): masks painted
by score, multiple inference merged as instance sets, windows stitched by ownership
(:mod:`.instances`). ``predict`` still rasterizes detections into ternary maps for code that
wants maps (validation during training uses the instance path through ``segment_iter``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn

from ..tiling import BlockTiling
from . import spec
from .instances import Detections
from .targets import BOUNDARY, INSIDE, ternary_labels
from .unet import TernarySpec


def _no_resize_transform(transform: nn.Module) -> nn.Module:
    """torchvision's transform without resizing: tiles keep their pixel size (scale matters)."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    class NoResize(GeneralizedRCNNTransform):
        def resize(self, image, target=None):
            return image, target

    return NoResize(
        transform.min_size,
        transform.max_size,
        transform.image_mean,
        transform.image_std,
        size_divisible=transform.size_divisible,
    )


def build_maskrcnn(
    backbone: str = "resnet18",
    fpn_channels: int = 128,
    head_width: int = 512,
    anchor_sizes: tuple[int, ...] = (8, 16, 32, 64, 128),
    detections_per_img: int = 500,
    score_threshold: float = 0.25,
) -> nn.Module:
    """A fresh torchvision Mask R-CNN for two classes (background, nucleus).

    ``backbone="resnet50", fpn_channels=256, head_width=1024`` is the layout of torchvision's
    ``maskrcnn_resnet50_fpn``; the defaults are a CPU-sized version (about 15 M parameters).
    Inputs are expected already normalized (:func:`.spec.to_input`): the internal transform
    neither normalizes (mean 0, std 1) nor resizes. Detections scored under ``score_threshold``
    are dropped (under 0.5 they cannot win a pixel of the rasterized maps anyway).
    """
    import torchvision
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    resnet = getattr(torchvision.models, backbone)(weights=None, norm_layer=nn.BatchNorm2d)
    widths = [resnet.layer1[-1].conv1.in_channels * 2**i for i in range(4)]
    body = BackboneWithFPN(
        resnet,
        return_layers={f"layer{i + 1}": str(i) for i in range(4)},
        in_channels_list=widths,
        out_channels=fpn_channels,
    )
    anchors = AnchorGenerator(
        sizes=tuple((s,) for s in anchor_sizes),
        aspect_ratios=((0.5, 1.0, 2.0),) * len(anchor_sizes),
    )
    model = MaskRCNN(
        body,
        num_classes=None,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=1000,
        rpn_pre_nms_top_n_test=1000,
        rpn_post_nms_top_n_test=1000,
        box_head=TwoMLPHead(fpn_channels * 7 * 7, head_width),
        box_predictor=FastRCNNPredictor(head_width, 2),
        box_score_thresh=score_threshold,
        box_detections_per_img=detections_per_img,
        box_batch_size_per_image=256,
        mask_head=MaskRCNNHeads(fpn_channels, [fpn_channels] * 4, 1),
        mask_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, 2),
    )
    model.transform = _no_resize_transform(model.transform)
    return model


def detection_targets(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """torchvision targets (``boxes`` x0 y0 x1 y1, ``labels``, ``masks``) of one label image.

    An image without nuclei gives empty targets, which torchvision trains on as a negative.
    """
    ids = torch.unique(labels)
    ids = ids[ids > 0]
    masks = labels[None] == ids[:, None, None]  # (N, H, W)
    rows, cols = masks.any(2), masks.any(1)
    boxes = torch.zeros((ids.numel(), 4), dtype=torch.float32, device=labels.device)
    if ids.numel():
        ar_r = torch.arange(labels.shape[0], device=labels.device)
        ar_c = torch.arange(labels.shape[1], device=labels.device)
        big = labels.shape[0] + labels.shape[1]
        boxes[:, 0] = torch.where(cols, ar_c, big).amin(1)
        boxes[:, 1] = torch.where(rows, ar_r, big).amin(1)
        boxes[:, 2] = torch.where(cols, ar_c, -1).amax(1) + 1
        boxes[:, 3] = torch.where(rows, ar_r, -1).amax(1) + 1
    return {
        "boxes": boxes,
        "labels": torch.ones(ids.numel(), dtype=torch.int64, device=labels.device),
        "masks": masks.to(torch.uint8),
    }


def rasterize(
    masks: np.ndarray, scores: np.ndarray, shape: tuple[int, int], mask_threshold: float = 0.5
) -> np.ndarray:
    """Ternary probabilities ``(3, H, W)`` from detections (mask probabilities and scores).

    Masks thresholded at ``mask_threshold`` are painted in order of increasing score (the most
    confident wins overlaps); the ternary classes of that label image are weighted by the
    confidence ``score x mask probability`` of each pixel (on the outer boundary ring, that of the
    neighbouring nucleus), the rest of the probability going to background.
    """
    labels = np.zeros(shape, np.int32)
    conf = np.zeros(shape, np.float32)
    for i in np.argsort(scores, kind="stable"):
        m = masks[i] > mask_threshold
        labels[m] = i + 1
        conf[m] = scores[i] * masks[i][m]
    ter = ternary_labels(labels)
    conf = np.where(labels > 0, conf, ndi.grey_dilation(conf, footprint=np.ones((3, 3), bool)))
    out = np.zeros((3, *shape), np.float32)
    out[INSIDE] = np.where(ter == INSIDE, conf, 0.0)
    out[BOUNDARY] = np.where(ter == BOUNDARY, conf, 0.0)
    out[0] = 1.0 - out[INSIDE] - out[BOUNDARY]
    return out


class MaskRCNNSpec(TernarySpec):
    """``maskrcnn``: torchvision Mask R-CNN whose detections are rasterized to ternary maps."""

    name = "maskrcnn"
    size_multiple = 32
    #: Inference keeps the detector's instances (see :mod:`.instances`) instead of maps.
    detector = True
    score_threshold = 0.5
    mask_threshold = 0.5
    #: Multiple inference: detections of the transforms with mask IoU >= merge_iou are one
    #: nucleus, kept when found in at least min_votes transforms (None: a majority).
    merge_iou = 0.5
    min_votes: int | None = None
    #: Windows of at most 448 px (384 + 2 x 32 halo): under the 500 detections per image.
    block_tiling = BlockTiling(tile=384, halo=32, min_tissue=0.0)

    def build(self, **kwargs: Any) -> nn.Module:
        """A fresh Mask R-CNN (keyword arguments as :func:`build_maskrcnn`)."""
        if "anchor_sizes" in kwargs:
            kwargs["anchor_sizes"] = tuple(kwargs["anchor_sizes"])
        return build_maskrcnn(**kwargs)

    def make_targets(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        """``instances``: the labels as int64 (boxes and masks are made in :meth:`train_loss`)."""
        return {"instances": np.asarray(labels).astype(np.int64)}

    def train_loss(
        self, model: nn.Module, x: torch.Tensor, targets: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Sum of torchvision's RPN, box and mask losses (the model computes losses only in
        training mode: an eval-mode model is switched for the call and switched back)."""
        was_training = model.training
        model.train()
        try:
            det = [detection_targets(lab.to(x.device)) for lab in targets["instances"]]
            losses = model(list(x), det)
        finally:
            model.train(was_training)
        return sum(losses.values())

    def detect(self, model: nn.Module, x: torch.Tensor) -> list[Detections]:
        """The detections of a batch (eval mode): soft masks and scores per image.

        Detections scored under ``score_threshold`` are dropped inside the network, before its
        mask head (they could win no pixel and join no merged cluster): about 20 % faster on a
        CPU with the shipped model's 0.4.
        """
        model.eval()
        heads = getattr(model, "roi_heads", None)
        before = getattr(heads, "score_thresh", None)
        if heads is not None:
            heads.score_thresh = float(self.score_threshold)
        try:
            with torch.no_grad():
                dets = model(list(x))
        finally:  # the model is shared (predict, training): leave its own threshold as it was
            if heads is not None:
                heads.score_thresh = before
        return [
            Detections(d["masks"][:, 0].float().cpu().numpy(), d["scores"].float().cpu().numpy())
            for d in dets
        ]

    def predict(self, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"ternary": (B, 3, H, W)}`` rasterized from the detections (eval mode)."""
        model.eval()
        with torch.no_grad():
            dets = model(list(x))
        shape = tuple(x.shape[-2:])
        maps = [
            rasterize(d["masks"][:, 0].cpu().numpy(), d["scores"].cpu().numpy(), shape)
            for d in dets
        ]
        return {"ternary": torch.from_numpy(np.stack(maps)).to(x.device)}


MASKRCNN = spec.register(MaskRCNNSpec())
