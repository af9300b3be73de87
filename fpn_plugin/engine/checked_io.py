"""Checked inputs for the command-line tools: reading images, and building a model with weights
that must fit it (the tools write through :func:`fpn_plugin.engine.atomic.atomic_output`).
Errors are :class:`CliError` with one message naming the file or key; the tools print it and
exit with status 2."""
import os

import numpy as np
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["CliError", "read_image", "build_model_with_weights", "load_weights_checked", "image_files"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class CliError(RuntimeError):
    """A bad input of a command; its message is meant for the user as it is."""


def read_image(path, fmt="BGR") -> np.ndarray:
    """(H, W, 3) uint8 image in ``fmt``; CliError naming the file if missing or unreadable."""
    from detectron2.data.detection_utils import read_image as d2_read

    if not os.path.isfile(path):
        raise CliError(f"image not found: {path}")
    try:
        return d2_read(path, format=fmt)
    except (OSError, SyntaxError, ValueError) as e:
        raise CliError(f"cannot read image {path}: {e}") from e


def image_files(inputs):
    """The image paths named by ``inputs``: files as given, folders expanded (sorted)."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths += sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTS))
        else:
            paths.append(item)
    if not paths:
        raise CliError(f"no images found in {list(inputs)}")
    return paths


def build_model_with_weights(cfg):
    """The model of ``cfg`` in eval mode, with MODEL.WEIGHTS loaded when set. Weights that do not
    fit the config (mis-shaped or missing model tensors) are a CliError naming both files."""
    from detectron2.modeling import build_model

    model = build_model(cfg).eval()
    load_weights_checked(model, cfg.MODEL.WEIGHTS)
    return model


def load_weights_checked(model, weights):
    """Load ``weights`` (a path or URL; nothing when empty) into ``model`` with Detectron2's
    DetectionCheckpointer. Missing files, unreadable checkpoints and weights that do not fit the
    model (mis-shaped or missing tensors) are a CliError naming the file, checked after loading,
    since DetectionCheckpointer only logs them."""
    if not weights:
        return
    if "://" not in weights and not os.path.isfile(weights):
        raise CliError(f"weights not found: {weights} (MODEL.WEIGHTS)")
    checkpointer = _RecordingCheckpointer(model)
    try:
        checkpointer.load(weights)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is the same user error
        raise CliError(f"cannot read weights {weights}: {type(e).__name__}: {e}") from e
    incompatible = checkpointer.incompatible
    problems = [f"{k}: {tuple(a)} in the weights, {tuple(b)} in the model" for k, a, b in incompatible.incorrect_shapes]
    problems += [f"{k}: missing from the weights" for k in incompatible.missing_keys]
    if problems:
        raise CliError(
            f"weights {weights} do not fit the config ({len(problems)} tensors), e.g. "
            + "; ".join(problems[:3])
        )


class _RecordingCheckpointer(DetectionCheckpointer):
    """Keeps what did not fit (``self.incompatible``), which DetectionCheckpointer only logs."""

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible
