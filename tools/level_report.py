#!/usr/bin/env python3
"""Fit the pyramid to a dataset, before any training: a registered one, or a COCO json as it is
(image sizes from its ``images`` entries; no image file is read). It reports how its ground-truth boxes fall on
the levels under Eq. 1 (the config's k0, canonical size and rounding), how well the config's anchors
cover them (best anchor IoU >= 0.5 and >= 0.7, and the RPN's positive anchors per box, per COCO
size class), which levels are empty or overloaded, and anchor sizes and a canonical size that fit
the data, as a config fragment to paste.
Boxes are measured at the config's test-time input scale (INPUT.MIN_SIZE_TEST, MAX_SIZE_TEST).

    python tools/level_report.py --config-file configs/fpn_paper.yaml --dataset fpn_shapes_val \
        --output levels.png [--max-images N] [KEY VALUE ...]
    python tools/level_report.py --config-file configs/fpn_paper.yaml --json annotations.json --output levels.png

Warns when many boxes are smaller than a cell of the finest map at the test scale, with the input
scale at which they are not. Bad input (a json that is not COCO, images without a size, a config
whose ROI heads pool no pyramid level) is one line naming the file or key, and exit status 2.
"""
import argparse
import os
import sys

from fpn_plugin.engine.atomic import atomic_output
from fpn_plugin.engine.checked_io import CliError
from fpn_plugin.config import load_config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="a name registered in DatasetCatalog")
    source.add_argument("--json", help="a COCO annotation file (instances json)")
    parser.add_argument("--output", required=True, help="the PNG picture to write")
    parser.add_argument("--max-images", type=int, default=0,
                        help="use this many images, evenly spaced over the dataset (0: all)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    args = parser.parse_args(argv)
    try:
        import torch
        from detectron2.data import DatasetCatalog

        import fpn_plugin  # noqa: F401  (registers the embedded datasets)
        from fpn_plugin.analysis.anchor_coverage import feature_levels, gt_boxes
        from fpn_plugin.analysis.pyramid_fit import fit_pyramid, format_report
        from fpn_plugin.analysis.visualize import plot_pyramid_fit

        from fpn_plugin.data import DatasetFileError
        from fpn_plugin.data.datasets import load_json_checked

        cfg = load_config(args.config_file, args.opts)
        name = args.dataset or args.json
        if args.json:
            try:
                dicts = load_json_checked(args.json, "", args.json, metadata=False)
            except DatasetFileError as e:
                raise CliError(str(e)) from e
        elif args.dataset not in DatasetCatalog:
            raise CliError(f"dataset {args.dataset!r} is not registered; registered: {', '.join(DatasetCatalog.list())}")
        else:
            try:
                dicts = DatasetCatalog.get(args.dataset)
            except Exception as e:  # noqa: BLE001 - the loader's own error, with its file name
                raise CliError(f"cannot load dataset {args.dataset!r}: {e}") from e
        if not [f for f in cfg.MODEL.ROI_HEADS.IN_FEATURES if f[1:].isdigit()]:
            raise CliError(f"MODEL.ROI_HEADS.IN_FEATURES={cfg.MODEL.ROI_HEADS.IN_FEATURES} names no pyramid level")
        # The model pads its input to a multiple of the coarsest bottom-up stride (res5: 32).
        divisibility = 2 ** max(feature_levels(cfg.MODEL.FPN.IN_FEATURES))
        gt = gt_boxes(dicts, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, divisibility, args.max_images)
        if gt.skipped:
            print(f"warning: {name}: {gt.skipped} boxes of zero or negative width or height skipped", file=sys.stderr)
        if not len(gt.boxes):
            raise CliError(f"{name}: no ground-truth box of positive size to fit the pyramid to")
        torch.set_num_threads(1)  # one image's IoU blocks are small: threads only add contention
        fit = fit_pyramid(cfg, gt)
        with atomic_output(args.output) as tmp:
            plot_pyramid_fit(fit, tmp, title=f"{os.path.basename(name)}: {len(gt.boxes)} boxes on the pyramid, now and suggested")
    except (CliError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    scale = (f"short side resized to {cfg.INPUT.MIN_SIZE_TEST} px, long side at most {cfg.INPUT.MAX_SIZE_TEST} px"
             if cfg.INPUT.MIN_SIZE_TEST else "native resolution, INPUT.MIN_SIZE_TEST 0")
    print(format_report(fit, f"{name}: {len(gt.boxes)} ground-truth boxes in {len(gt.padded)} images, "
                             f"measured at the model's test-time input scale ({scale}); sizes in input pixels"))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
