"""fpn_plugin: the FPN paper's backbone, necks and ROI heads as Detectron2 components.

Detectron2 itself is not on PyPI: tools/setup_env.sh builds it (README, "How Detectron2 is installed").
"""
from setuptools import find_packages, setup

setup(
    name="fpn_plugin",
    version="0.1.0",
    description="Feature Pyramid Networks (Lin et al., CVPR 2017) for Detectron2",
    packages=find_packages(include=["fpn_plugin", "fpn_plugin.*"]),
    python_requires=">=3.10",
    # torch, torchvision and detectron2 are deliberately not listed: pip must never replace the
    # torch that Detectron2's compiled extension was built against.
    install_requires=["numpy", "Pillow", "pycocotools>=2.0.2", "shapely"],  # shapely: cropping polygon masks
    extras_require={"test": ["pytest", "hypothesis"]},
)
