"""The model: bottom-up networks, necks, the Eq. 1 pooler and the ROI heads. Importing it registers
the backbones and ROI heads in Detectron2's registries and the necks in :data:`NECK_REGISTRY`."""
