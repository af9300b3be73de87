"""LazyConfig: the main job's model (configs/fpn_paper.py) with Detectron2's RegNetX-200MF as the
bottom-up, a Backbone object that Detectron2 builds from LazyConfig only (it has no yacs builder).
The neck takes any Backbone and reads its maps' channels and strides from ``output_shape()``;
RegNet names its stride-4..32 stages s1..s4.

    python lazyconfig_train_net.py --config-file configs/fpn_paper_regnet.py
"""
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.regnet import RegNet, ResBottleneckBlock, SimpleStem

from .fpn_paper import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

# RegNetX-200MF (Radosavovic et al. 2020, Table 8 parameters), trained from scratch with BN.
model.backbone.bottom_up = L(RegNet)(
    stem_class=SimpleStem,
    stem_width=32,
    block_class=ResBottleneckBlock,
    depth=13,
    w_a=36.44,
    w_0=24,
    w_m=2.49,
    group_width=8,
    norm="BN",
    out_features=["s1", "s2", "s3", "s4"],  # C2..C5, strides 4..32
)
train.output_dir = "./output/fpn_paper_regnet_lazy"
