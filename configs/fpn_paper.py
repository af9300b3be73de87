"""LazyConfig of configs/fpn_paper.yaml: the same model (same parameter names and shapes), data
and schedule, built with ``detectron2.config.instantiate`` and trainable with Detectron2's
LazyConfig training loop (its tools/lazyconfig_train_net.py):

    python lazyconfig_train_net.py --config-file configs/fpn_paper.py

(Detectron2's LazyConfig loop has no gradient clipping; the YAML job clips at norm 5.)
"""
import torch
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.data import get_detection_dataset_dicts
from detectron2.layers import ShapeSpec
import detectron2.data.transforms as T
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler

import fpn_plugin  # noqa: F401  (registers the embedded datasets)
from fpn_plugin import FPNPaperROIHeads, LevelROIPooler, PaperFPN
from fpn_plugin.modeling.bottom_up import basic_block_stages
from fpn_plugin.data import sanitize_annotations
from fpn_plugin.data.mapper import CheckedDatasetMapper

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
dataloader = model_zoo.get_config("common/data/coco.py").dataloader
optimizer = model_zoo.get_config("common/optim.py").AdamW
train = model_zoo.get_config("common/train.py").train

# --- model: Base-FPN-Paper.yaml + fpn_paper.yaml ---------------------------------------------
model.backbone = L(PaperFPN)(
    bottom_up=L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=32, norm="BN"),
        # R-18 at half width (res2..res5: 32, 64, 128, 256 channels)
        stages=L(basic_block_stages)(depth=18, stem_channels=32, res2_channels=32, norm="BN"),
        out_features=["res2", "res3", "res4", "res5"],  # C2..C5
        freeze_at=0,
    ),
    in_features="${.bottom_up.out_features}",
    top_down_channels=128,  # d = 128
    out_channels=128,
    norm="BN",
)
model.pixel_std = [1.0, 1.0, 1.0]  # Detectron2's default, as the YAML job uses
model.proposal_generator.head.in_channels = 128
model.proposal_generator.anchor_generator.sizes = [[13], [26], [52], [104], [208]]  # fitted to the data
model.proposal_generator.pre_nms_topk = (1000, 1000)
model.proposal_generator.post_nms_topk = (256, 1000)


def level_pooler(output_size):
    """Eq. 1 pooler over P2..P5 with k0 = 4 and the canonical size fitted to the data (37 px)."""
    return L(LevelROIPooler)(
        output_size=output_size, scales=(1 / 4, 1 / 8, 1 / 16, 1 / 32), sampling_ratio=0,
        pooler_type="ROIAlignV2", canonical_box_size=37, canonical_level=4, level_rounding="floor",
    )


roi_heads = model.roi_heads
roi_heads._target_ = FPNPaperROIHeads
roi_heads.num_classes = 5
roi_heads.batch_size_per_image = 64  # up to half foreground: fpn_paper.yaml says why
roi_heads.positive_fraction = 0.5
roi_heads.box_pooler = level_pooler(7)
roi_heads.box_head.input_shape = ShapeSpec(channels=128, height=7, width=7)
for key in ("mask_in_features", "mask_pooler", "mask_head"):  # boxes only, as fpn_paper.yaml
    del roi_heads[key]

# --- data: the embedded shapes dataset (dense training split) at native resolution, 256 px crops
dataloader.train.dataset = L(sanitize_annotations)(
    dataset_dicts=L(get_detection_dataset_dicts)(names="fpn_shapes_train_dense", filter_empty=False)
)
dataloader.train.mapper._target_ = CheckedDatasetMapper
dataloader.train.mapper.augmentations = [
    L(T.RandomCrop)(crop_type="absolute", crop_size=(256, 256)),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.mapper.use_instance_mask = False
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 1
dataloader.test.dataset.names = "fpn_shapes_val"
dataloader.test.mapper._target_ = CheckedDatasetMapper
dataloader.test.mapper.augmentations = []
dataloader.test.num_workers = 1

# --- schedule: AdamW, 960 iterations, lr 0.0007 with 50 warm-up iterations, then cosine to 0
optimizer.lr = 0.0007
optimizer.weight_decay = 0.05  # on conv and fc weights; none on norm layers and biases
optimizer.params.weight_decay_bias = 0.0
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.0),
    warmup_length=50 / 960,
    warmup_factor=0.001,
)
train.max_iter = 960
train.output_dir = "./output/fpn_paper_lazy"
train.checkpointer.period = 100
train.eval_period = 960
train.device = "cuda" if torch.cuda.is_available() else "cpu"
