"""Export of the plugin's models: TorchScript by scripting and by tracing, and ONNX, each checked
against eager outputs on the same input."""
from typing import Dict, Tuple

import torch
from detectron2.export import TracingAdapter, scripting_with_instances
from detectron2.structures import Boxes

__all__ = ["EXPORT_FORMATS", "TOLERANCE", "script_fields", "export_scripted", "export_traced", "export_onnx", "eager_outputs"]

EXPORT_FORMATS = ("torchscript", "tracing", "onnx")
#: Largest difference (px, score) between exported and eager detections an export may show:
#: ONNX Runtime's float rounding, amplified by untrained box deltas, stays at hundredths.
TOLERANCE = 0.1

# Instances fields of a scripted R-CNN: Detectron2's (as its export tests give them), the plugin's
# pred_levels, and those of the mask and keypoint heads where they are on.
_SCRIPT_FIELDS = {
    "proposal_boxes": Boxes, "objectness_logits": torch.Tensor,
    "pred_boxes": Boxes, "scores": torch.Tensor, "pred_classes": torch.Tensor, "pred_levels": torch.Tensor,
}
_MASK_FIELDS = {"pred_masks": torch.Tensor}
_KEYPOINT_FIELDS = {"pred_keypoints": torch.Tensor, "pred_keypoint_heatmaps": torch.Tensor}


def script_fields(model) -> Dict[str, type]:
    """The Instances fields ``scripting_with_instances`` needs for ``model``."""
    heads = getattr(model, "roi_heads", None)
    fields = dict(_SCRIPT_FIELDS)
    if getattr(heads, "mask_on", False):
        fields.update(_MASK_FIELDS)
    if getattr(heads, "keypoint_on", False):
        fields.update(_KEYPOINT_FIELDS)
    return fields


@torch.no_grad()
def eager_outputs(model, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """(boxes (R, 4), classes (R,), scores (R,)) of the eager model, before resizing to the
    original image, for a (3, H, W) float image in the model's input format."""
    inst = model.inference([{"image": image}], do_postprocess=False)[0]
    return inst.pred_boxes.tensor, inst.pred_classes, inst.scores


def _max_diff(a, b) -> float:
    """Largest difference between two detection sets (boxes, classes, scores), matching each
    detection to its nearest counterpart: detections of equal score may come in either order."""
    if any(x.shape != y.shape for x, y in zip(a, b)):
        return float("inf")
    if a[0].numel() == 0:
        return 0.0
    rows_a = torch.cat([a[0].float(), a[1].float()[:, None], a[2].float()[:, None]], 1)
    rows_b = torch.cat([b[0].float(), b[1].float()[:, None], b[2].float()[:, None]], 1)
    dist = (rows_a[:, None, :] - rows_b[None, :, :]).abs().amax(-1)  # (R, R) L-inf distances
    return float(max(dist.min(1).values.max(), dist.min(0).values.max()))


@torch.no_grad()
def export_scripted(model, image: torch.Tensor, path: str) -> Dict[str, float]:
    """torch.jit.script through Detectron2's ``scripting_with_instances``; saved to ``path``.
    Returns {"max_abs_diff": ...} against eager on ``image``."""
    scripted = scripting_with_instances(model, script_fields(model))
    scripted.save(path)
    loaded = torch.jit.load(path)
    inst = loaded.inference([{"image": image}], do_postprocess=False)[0]
    got = (inst.pred_boxes.tensor, inst.pred_classes, inst.scores)
    return {"max_abs_diff": _max_diff(got, eager_outputs(model, image))}


def _adapter(model, image):
    # eval(): exporters restore the adapter's mode on exit, and a new Module starts in training mode
    return TracingAdapter(model, [{"image": image}]).eval()


@torch.no_grad()
def export_traced(model, image: torch.Tensor, path: str) -> Dict[str, float]:
    """torch.jit.trace of Detectron2's ``TracingAdapter`` (inputs: one (3, H, W) image;
    outputs: the Instances fields, image size); saved to ``path``."""
    adapter = _adapter(model, image)
    traced = torch.jit.trace(adapter, adapter.flattened_inputs)
    traced.save(path)
    got = _detections(adapter, torch.jit.load(path)(image))
    return {"max_abs_diff": _max_diff(got, eager_outputs(model, image))}


def _detections(adapter, flat_outputs):
    """(boxes, classes, scores) from an exported model's flat outputs, rebuilt into Instances by
    the adapter's schema (the flat order follows the Instances fields, pred_levels included)."""
    inst = adapter.outputs_schema([torch.as_tensor(x) for x in flat_outputs])[0]["instances"]
    return inst.pred_boxes.tensor, inst.pred_classes, inst.scores


@torch.no_grad()
def export_onnx(model, image: torch.Tensor, path: str, opset: int = 16) -> Dict[str, float]:
    """ONNX (opset 16, TorchScript-based exporter) of the ``TracingAdapter``; checked with
    onnxruntime when it is installed (else the diff is NaN)."""
    adapter = _adapter(model, image)
    torch.onnx.export(adapter, (image,), path, dynamo=False, opset_version=opset, input_names=["image"])
    try:
        import onnxruntime
    except ImportError:
        return {"max_abs_diff": float("nan")}
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = _detections(adapter, session.run(None, {"image": image.numpy()}))
    return {"max_abs_diff": _max_diff(got, eager_outputs(model, image))}
