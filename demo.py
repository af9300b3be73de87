#!/usr/bin/env python3
"""Detections drawn with Detectron2's Visualizer, for an image, several, or a folder.

    python demo.py --config-file configs/fpn_paper.yaml --input img1.jpg img2.jpg folder/ \
        --output out_dir/ [--confidence 0.5] MODEL.WEIGHTS output/fpn_paper/model_final.pth
"""
import argparse
import os
import sys

from fpn_plugin.checked_io import CliError, atomic_output, build_model_with_weights, image_files, read_image
from fpn_plugin.config import load_config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", required=True, nargs="+", help="image files and/or folders")
    parser.add_argument("--output", required=True, help="folder for the drawn images")
    parser.add_argument("--confidence", type=float, default=0.5, help="minimum score to draw")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS path")
    args = parser.parse_args(argv)
    try:
        import torch
        import tqdm
        from detectron2.data import MetadataCatalog
        from detectron2.utils.visualizer import Visualizer

        cfg = load_config(args.config_file, list(args.opts) + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", args.confidence])
        paths = image_files(args.input)
        images = [read_image(p, cfg.INPUT.FORMAT) for p in paths]  # every input checked before any work
        model = build_model_with_weights(cfg)
        metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")
        names = set()
        for path, image in tqdm.tqdm(list(zip(paths, images)), desc="demo", unit="image"):
            with torch.no_grad():
                tensor = torch.as_tensor(image.transpose(2, 0, 1).copy())
                inst = model([{"image": tensor, "height": image.shape[0], "width": image.shape[1]}])[0]["instances"]
            rgb = image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image
            drawn = Visualizer(rgb, metadata).draw_instance_predictions(inst.to("cpu"))
            name = os.path.splitext(os.path.basename(path))[0]
            while name in names:  # two inputs with one base name keep both outputs
                name += "_"
            names.add(name)
            with atomic_output(os.path.join(args.output, name + ".png")) as tmp:
                drawn.save(tmp)
    except (CliError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} images to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
