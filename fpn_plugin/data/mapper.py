"""Detectron2's DatasetMapper, with one clear error naming the image file it cannot read."""
from detectron2.data import DatasetMapper

from .datasets import DatasetFileError

__all__ = ["CheckedDatasetMapper"]


class CheckedDatasetMapper(DatasetMapper):
    """Same inputs and outputs as :class:`DatasetMapper`; a missing, truncated or corrupt image
    raises :class:`DatasetFileError` with the file's path instead of a bare decoder error."""

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except (OSError, SyntaxError) as e:  # what PIL raises for missing and undecodable files
            raise DatasetFileError(
                f"cannot read image {dataset_dict.get('file_name')}: {type(e).__name__}: {e}"
            ) from e
