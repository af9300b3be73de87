"""Data: the embedded synthetic shapes dataset and the checks applied to training sets."""
from .datasets import (
    DatasetFileError,
    check_proposal_files,
    check_has_masks,
    register_shapes,
    sanitize_annotations,
)
from .generation import generate_shapes
from .shapes import CATEGORIES, SPLITS, ShapesSpec

for _name in SPLITS:
    register_shapes(_name)

__all__ = [
    "CATEGORIES",
    "SPLITS",
    "ShapesSpec",
    "generate_shapes",
    "register_shapes",
    "sanitize_annotations",
    "check_proposal_files",
    "check_has_masks",
    "DatasetFileError",
]
