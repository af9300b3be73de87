"""Detectron2's DatasetMapper, with one clear error naming the image file it cannot read, and
images without objects mapped when masks are cropped."""
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils

from .datasets import DatasetFileError

__all__ = ["CheckedDatasetMapper"]


class CheckedDatasetMapper(DatasetMapper):
    """Same inputs and outputs as :class:`DatasetMapper`; a missing, truncated or corrupt image
    raises :class:`DatasetFileError` with the file's path instead of a bare decoder error.

    With masks and cropping on, DatasetMapper recomputes each box from its cropped mask
    (``recompute_boxes``); an image without objects has no ``gt_masks`` to recompute from, and
    DatasetMapper fails on it. Through DatasetMapper's ``_transform_annotations`` hook such an
    image gets the empty target DatasetMapper gives it without masks, so object-free images stay
    negatives in the mask job as in the box job.
    """

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except (OSError, SyntaxError) as e:  # what PIL raises for missing and undecodable files
            raise DatasetFileError(
                f"cannot read image {dataset_dict.get('file_name')}: {type(e).__name__}: {e}"
            ) from e

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        if any(a.get("iscrowd", 0) == 0 for a in dataset_dict["annotations"]):
            return super()._transform_annotations(dataset_dict, transforms, image_shape)
        dataset_dict.pop("annotations")  # crowd regions only, or none: no object, no box to recompute
        empty = utils.annotations_to_instances([], image_shape, mask_format=self.instance_mask_format)
        dataset_dict["instances"] = utils.filter_empty_instances(empty)
