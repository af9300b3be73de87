"""Registration of the embedded splits, and the checks every training set goes through."""
import json
import logging
import os
from typing import Dict, List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.structures import BoxMode

from .generation import ensure_shapes
from .shapes import CATEGORIES

__all__ = [
    "register_shapes",
    "sanitize_annotations",
    "check_proposal_files",
    "check_has_masks",
    "load_json_checked",
    "DatasetFileError",
]

logger = logging.getLogger(__name__)


class DatasetFileError(RuntimeError):
    """An annotation or image file is missing or unreadable; the message names the file."""


def _default_root() -> str:
    # Where Detectron2 looks for its builtin datasets; the embedded splits live beside them.
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def load_json_checked(json_file: str, image_root: str, name: str, metadata: bool = True) -> List[Dict]:
    """``load_coco_json`` with one clear error naming the file when it is missing, corrupt, not a
    COCO json (no ``images`` or ``annotations`` list) or has images without a width or height.
    No image file is read: the sizes come from the json's ``images`` entries. ``metadata``: let
    ``load_coco_json`` record the categories under ``name`` in MetadataCatalog."""
    if not os.path.isfile(json_file):
        raise DatasetFileError(f"annotation file of dataset '{name}' not found: {json_file}")
    try:
        with open(json_file) as f:
            coco = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetFileError(
            f"annotation file of dataset '{name}' is corrupt: {json_file} ({type(e).__name__}: {e})"
        ) from e
    missing = [k for k in ("images", "annotations") if not isinstance(coco, dict) or not isinstance(coco.get(k), list)]
    if missing:
        raise DatasetFileError(f"{json_file} is not a COCO json: no {' or '.join(repr(k) for k in missing)} list")
    unsized = [img for img in coco["images"] if not all(_positive(img.get(k)) for k in ("width", "height"))]
    if unsized:
        first = unsized[0]
        raise DatasetFileError(
            f"{json_file}: {len(unsized)} of {len(coco['images'])} images have no positive width and height, "
            f"e.g. id {first.get('id')!r} ({first.get('file_name', 'no file_name')})"
        )
    try:
        return load_coco_json(json_file, image_root, name if metadata else None)
    except (KeyError, TypeError, ValueError, AssertionError) as e:
        raise DatasetFileError(
            f"annotation file of dataset '{name}' is corrupt: {json_file} ({type(e).__name__}: {e})"
        ) from e


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def register_shapes(name: str):
    """Register split ``name`` of :data:`SPLITS` in COCO json form. The dataset root
    (``$DETECTRON2_DATASETS``, default ``./datasets``) is read when the dataset is loaded, not
    here, and the split is generated there on first use."""

    def load():
        root = _default_root()
        json_file = ensure_shapes(name, root)
        image_root = os.path.join(root, name, "images")
        meta = MetadataCatalog.get(name)
        if meta.get("json_file") != json_file:
            # First load, or the root moved since: the metadata COCOEvaluator reads follows it.
            MetadataCatalog.remove(name)
            _set_metadata(name, json_file, image_root)
        return load_json_checked(json_file, image_root, name)

    DatasetCatalog.register(name, load)
    _set_metadata(name, None, None)


def _set_metadata(name, json_file, image_root):
    meta = MetadataCatalog.get(name).set(thing_classes=list(CATEGORIES), evaluator_type="coco")
    if json_file:
        meta.set(json_file=json_file, image_root=image_root)


def check_proposal_files(proposal_files) -> None:
    """Raise DatasetFileError naming the first of ``proposal_files`` (DATASETS.PROPOSAL_FILES_*)
    that does not exist."""
    for path in proposal_files:
        if not os.path.isfile(path):
            raise DatasetFileError(f"proposal file not found: {path} (DATASETS.PROPOSAL_FILES_*)")


def sanitize_annotations(dataset_dicts: List[Dict]) -> List[Dict]:
    """Drop, with one warning, the annotations that would train on nothing: boxes of zero or
    negative area and boxes wholly outside their image. Partly-outside boxes are kept (the
    data mapper clips them). Records are copied, never changed in place. Kept beside Detectron2's
    own filters because they differ: ``filter_empty_instances`` drops empty boxes after each
    sample's transforms, silently, and ``filter_images_with_only_crowd_annotations`` drops images,
    not boxes; this names what it drops, once, before training."""
    out, dropped = [], []
    for record in dataset_dicts:
        w, h = record.get("width"), record.get("height")
        keep = []
        for anno in record.get("annotations", []):
            x0, y0, x1, y1 = BoxMode.convert(list(anno["bbox"]), anno["bbox_mode"], BoxMode.XYXY_ABS)
            outside = w is not None and h is not None and (x0 >= w or y0 >= h or x1 <= 0 or y1 <= 0)
            if x1 <= x0 or y1 <= y0 or outside:
                dropped.append((record.get("file_name"), list(anno["bbox"])))
            else:
                keep.append(anno)
        out.append({**record, "annotations": keep} if "annotations" in record else record)
    if dropped:
        logger.warning(
            "Dropped %d annotations with zero area or outside their image, e.g. %s",
            len(dropped), "; ".join(f"{f} bbox={b}" for f, b in dropped[:3]),
        )
    return out


def check_has_masks(dataset_dicts: List[Dict], names) -> None:
    """MODEL.MASK_ON needs instance masks: raise ValueError naming the datasets that lack them."""
    annos = [a for r in dataset_dicts for a in r.get("annotations", [])]
    if annos and not any("segmentation" in a for a in annos):
        raise ValueError(
            f"MODEL.MASK_ON=True but the training set {list(names)} has no instance masks "
            "('segmentation' in its annotations); use a dataset with masks or set MODEL.MASK_ON False"
        )
