#!/usr/bin/env python3
"""Detections drawn with Detectron2's Visualizer, for an image, several, or a folder.

    python demo.py --config-file configs/fpn_paper.yaml --input img1.jpg img2.jpg folder/ \
        --output out_dir/ [--confidence 0.5] [--levels] [--color-by-level] \
        MODEL.WEIGHTS output/fpn_paper/model_final.pth

The model runs through Detectron2's DefaultPredictor (the test-time resize of the config), so the
detections are the ones COCOEvaluator scores. --levels also writes out_dir/detections.json: one
record per detection in COCO results format ("image_id" is the input's index in the order the
images are processed, "bbox" is [x, y, w, h] in the image's pixels, "category_id" the dataset's
id when the test dataset's metadata maps them, else the model's class index), with its
"file_name" and its pyramid "level" (2..5: the level its RoI was pooled from).
"""
import argparse
import json
import os
import sys

from fpn_plugin.engine.atomic import atomic_output
from fpn_plugin.engine.checked_io import CliError, image_files, read_image
from fpn_plugin.config import load_config


def detection_records(instances, image_id, file_name, metadata):
    """COCO results records of one image's detections (Instances on the CPU, with pred_levels),
    plus each one's "file_name" and pyramid "level"."""
    from detectron2.structures import BoxMode

    to_dataset = {v: k for k, v in (metadata.get("thing_dataset_id_to_contiguous_id") or {}).items()}
    boxes = BoxMode.convert(instances.pred_boxes.tensor, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS).tolist()
    classes = instances.pred_classes.tolist()
    return [
        {"image_id": image_id, "file_name": file_name, "category_id": to_dataset.get(c, c),
         "bbox": box, "score": score, "level": level}
        for box, c, score, level in zip(boxes, classes, instances.scores.tolist(), instances.pred_levels.tolist())
    ]


def draw(rgb, instances, metadata, by_level=False):
    """The picture: Detectron2's drawing of the detections, or with ``by_level`` each box in the
    colour of its pyramid level (fpn_plugin.analysis.visualize.LEVEL_COLOURS) and "P<level>" in its label."""
    from detectron2.utils.visualizer import Visualizer

    from fpn_plugin.analysis.visualize import LEVEL_COLOURS

    visualizer = Visualizer(rgb, metadata)
    if not by_level:
        return visualizer.draw_instance_predictions(instances)
    names = metadata.get("thing_classes")
    levels = instances.pred_levels.tolist()
    labels = [
        f"{names[c] if names and c < len(names) else c} {score:.0%} P{level}"
        for c, score, level in zip(instances.pred_classes.tolist(), instances.scores.tolist(), levels)
    ]
    colours = [tuple(v / 255 for v in LEVEL_COLOURS.get(level, (0, 0, 0))) for level in levels]
    masks = list(instances.pred_masks.numpy()) if instances.has("pred_masks") else None
    return visualizer.overlay_instances(boxes=instances.pred_boxes, labels=labels, masks=masks, assigned_colors=colours)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", required=True, nargs="+", help="image files and/or folders")
    parser.add_argument("--output", required=True, help="folder for the drawn images")
    parser.add_argument("--confidence", type=float, default=0.5, help="minimum score to draw")
    parser.add_argument("--levels", action="store_true",
                        help="also write detections.json (COCO results, each with its pyramid level) to --output")
    parser.add_argument("--color-by-level", action="store_true",
                        help="colour each box by the pyramid level its RoI was pooled from, and label it P2..P5")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS path")
    args = parser.parse_args(argv)
    try:
        import tqdm
        from detectron2.data import MetadataCatalog

        from fpn_plugin.engine.inference import build_predictor
        from fpn_plugin.modeling.roi_heads import FPNPaperROIHeads

        cfg = load_config(args.config_file, list(args.opts) + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", args.confidence])
        paths = image_files(args.input)
        images = [read_image(p, "BGR") for p in paths]  # every input checked before any work
        predictor = build_predictor(cfg)  # takes BGR and converts to INPUT.FORMAT itself
        metadata = getattr(predictor, "metadata", None) or MetadataCatalog.get("__unused")
        names, records, count = set(), [], 0
        if (args.levels or args.color_by_level) and not isinstance(predictor.model.roi_heads, FPNPaperROIHeads):
            raise CliError(
                f"--levels/--color-by-level need the plugin's ROI heads (MODEL.ROI_HEADS.NAME: FPNPaperROIHeads), "
                f"whose detections carry their pyramid level; {type(predictor.model.roi_heads).__name__} has none"
            )
        for index, (path, image) in enumerate(tqdm.tqdm(list(zip(paths, images)), desc="demo", unit="image")):
            inst = predictor(image)["instances"].to("cpu")
            drawn = draw(image[:, :, ::-1], inst, metadata, by_level=args.color_by_level)
            name = os.path.splitext(os.path.basename(path))[0]
            while name in names:  # two inputs with one base name keep both outputs
                name += "_"
            names.add(name)
            with atomic_output(os.path.join(args.output, name + ".png")) as tmp:
                drawn.save(tmp)
            count += len(inst)
            if args.levels:
                records += detection_records(inst, index, path, metadata)
        if args.levels:
            with atomic_output(os.path.join(args.output, "detections.json")) as tmp:
                with open(tmp, "w") as f:
                    json.dump(records, f)
    except (CliError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} images with {count} detections to {args.output}"
          + (" and detections.json" if args.levels else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
