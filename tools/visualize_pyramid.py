#!/usr/bin/env python3
"""Picture of the pyramid for one image: C2..C5 and P2..P6 at their true relative scale (channel
L2-norm per cell), and the detections coloured by the level their RoI was pooled from.

    python tools/visualize_pyramid.py --config-file configs/fpn_paper.yaml --input img.jpg \
        --output pyramid.png [--zoom 2] [MODEL.WEIGHTS output/fpn_paper/model_final.pth]
"""
import argparse
import sys

from fpn_plugin.checked_io import CliError, atomic_output, build_model_with_weights, read_image
from fpn_plugin.config import load_config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", required=True, help="an image file")
    parser.add_argument("--output", required=True, help="the PNG to write")
    parser.add_argument("--zoom", type=int, default=2, help="pixels per feature-map cell")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS path")
    args = parser.parse_args(argv)
    try:
        from fpn_plugin.visualize import pyramid_forward, render_pyramid

        cfg = load_config(args.config_file, args.opts)
        image = read_image(args.input, cfg.INPUT.FORMAT)
        with atomic_output(args.output) as tmp:
            model = build_model_with_weights(cfg)
            bottom_up, pyramid, instances, levels = pyramid_forward(model, image, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
            rgb = image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image
            render_pyramid(rgb.copy(), bottom_up, pyramid, instances, levels, zoom=args.zoom).save(tmp, format="PNG")
    except (CliError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {len(instances)} detections")
    return 0


if __name__ == "__main__":
    sys.exit(main())
