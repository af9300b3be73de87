"""Detectron2's DatasetMapper, with one clear error naming the image file it cannot read, and
images without objects mapped when masks are cropped."""
from detectron2.data import DatasetMapper

from .datasets import DatasetFileError

__all__ = ["CheckedDatasetMapper"]


class CheckedDatasetMapper(DatasetMapper):
    """Same inputs and outputs as :class:`DatasetMapper`; a missing, truncated or corrupt image
    raises :class:`DatasetFileError` with the file's path instead of a bare decoder error.

    With masks and cropping on, DatasetMapper recomputes each box from its cropped mask
    (``recompute_boxes``); an image without objects gets no ``gt_masks`` to recompute from, and
    DatasetMapper fails on it. Such an image is mapped without the recomputation (it has no box
    to recompute), so object-free images stay negatives in the mask job as in the box job.
    """

    def __call__(self, dataset_dict):
        recompute = self.recompute_boxes
        if recompute and not any(a.get("iscrowd", 0) == 0 for a in dataset_dict.get("annotations", ())):
            self.recompute_boxes = False
        try:
            return super().__call__(dataset_dict)
        except (OSError, SyntaxError) as e:  # what PIL raises for missing and undecodable files
            raise DatasetFileError(
                f"cannot read image {dataset_dict.get('file_name')}: {type(e).__name__}: {e}"
            ) from e
        finally:
            self.recompute_boxes = recompute
