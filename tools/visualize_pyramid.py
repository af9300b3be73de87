#!/usr/bin/env python3
"""Picture of the pyramid for one image: C2..C5 and P2..P6 at their true relative scale (channel
L2-norm per cell), and the detections coloured by the level their RoI was pooled from.

    python tools/visualize_pyramid.py --config-file configs/fpn_paper.yaml --input img.jpg \
        --output pyramid.png [--zoom 2] [--confidence 0.5] [MODEL.WEIGHTS output/fpn_paper/model_final.pth]

Any Detectron2 FPN detector works, not only the plugin's: a stock config and its weights, e.g.
--config-file detectron2/model_zoo/configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml
MODEL.WEIGHTS model_final.pkl, give the same picture, with levels by Detectron2's own rule. The
model runs as Detectron2's DefaultPredictor runs it (the config's test-time resize).
"""
import argparse
import sys

from fpn_plugin.engine.atomic import atomic_output
from fpn_plugin.engine.checked_io import CliError, read_image
from fpn_plugin.config import load_config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", required=True, help="an image file")
    parser.add_argument("--output", required=True, help="the PNG to write")
    parser.add_argument("--zoom", type=int, default=2, help="pixels per feature-map cell")
    parser.add_argument("--confidence", type=float, default=0.5, help="minimum score of a drawn detection")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS path")
    args = parser.parse_args(argv)
    try:
        from fpn_plugin.engine.inference import build_predictor
        from fpn_plugin.analysis.visualize import pyramid_forward, render_pyramid

        cfg = load_config(args.config_file, args.opts)
        image = read_image(args.input, "BGR")  # DefaultPredictor converts to INPUT.FORMAT itself
        with atomic_output(args.output) as tmp:
            predictor = build_predictor(cfg)
            if not hasattr(predictor.model.backbone, "bottom_up"):
                raise CliError(f"{args.config_file}: the backbone {type(predictor.model.backbone).__name__} "
                               "is not an FPN with a bottom-up network (backbone.bottom_up)")
            bottom_up, pyramid, instances = pyramid_forward(predictor, image)
            total = len(instances)
            instances = instances[instances.scores >= args.confidence]
            levels = instances.pred_levels if instances.has("pred_levels") else None
            render_pyramid(image[:, :, ::-1].copy(), bottom_up, pyramid, instances, levels, zoom=args.zoom).save(
                tmp, format="PNG"
            )
    except (CliError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {len(instances)} detections drawn (score >= {args.confidence}) of {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
