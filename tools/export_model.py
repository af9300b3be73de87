#!/usr/bin/env python3
"""Export a plugin model to TorchScript (scripting, tracing) and ONNX, and check each export's
outputs against eager PyTorch on the same input, resized to the config's test-time size. An export
whose detections differ from eager by more than fpn_plugin.engine.export.TOLERANCE is refused
(nothing written, one line saying why, exit status 2).

    python tools/export_model.py --config-file configs/fpn_paper.yaml [--format torchscript tracing onnx] \
        [--sample-image img.jpg] --output exported/ MODEL.WEIGHTS model_final.pth
"""
import argparse
import os
import sys

from fpn_plugin.engine.atomic import atomic_output
from fpn_plugin.engine.checked_io import CliError, build_model_with_weights, read_image
from fpn_plugin.config import load_config

FILES = {"torchscript": "model_scripted.ts", "tracing": "model_traced.ts", "onnx": "model.onnx"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--output", required=True, help="folder for the exported files")
    parser.add_argument("--format", nargs="+", default=list(FILES), choices=list(FILES))
    parser.add_argument("--sample-image", help="input used to trace and to compare (default: a fixed random image)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS path")
    args = parser.parse_args(argv)
    try:
        import torch

        from fpn_plugin.engine import export
        from fpn_plugin.engine.inference import test_time_resize

        cfg = load_config(args.config_file, args.opts)
        cfg.defrost()
        cfg.MODEL.DEVICE = "cpu"
        # The fast path is switched on by forward hooks, which exporters do not carry: export the
        # default (fp32) model, which has the same weights.
        cfg.MODEL.FPN_PAPER.FAST.CHANNELS_LAST, cfg.MODEL.FPN_PAPER.FAST.AUTOCAST = False, ""
        if args.sample_image:
            array = read_image(args.sample_image, cfg.INPUT.FORMAT)
        else:
            array = torch.randint(0, 256, (256, 320, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).numpy()
        # Eager and exported models both see the input at the config's test-time size, as the
        # test loader and DefaultPredictor feed it.
        array = test_time_resize(cfg).get_transform(array).apply_image(array)
        image = torch.as_tensor(array.transpose(2, 0, 1).copy()).float()
        model = build_model_with_weights(cfg)
        rows = []
        for fmt in args.format:
            run = {"torchscript": export.export_scripted, "tracing": export.export_traced, "onnx": export.export_onnx}[fmt]
            path = os.path.join(args.output, FILES[fmt])
            with atomic_output(path) as tmp:
                try:
                    result = run(model, image, tmp)
                except NotImplementedError as e:
                    raise CliError(f"{fmt}: {e}") from e
                if result["max_abs_diff"] > export.TOLERANCE:  # NaN (no onnxruntime) passes: unchecked
                    raise CliError(
                        f"{fmt}: not written: the exported model's detections differ from eager PyTorch's by "
                        f"{result['max_abs_diff']:.3g} (more than {export.TOLERANCE}), so the export does not "
                        "record what this model computes (tracing keeps one input's Python control flow); "
                        "try --format torchscript"
                    )
            rows.append((fmt, path, result["max_abs_diff"]))
    except (CliError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"input {image.shape[1]}x{image.shape[2]} (the config's test-time size)")
    print("| format | file | max abs diff vs eager |\n|---|---|---|")
    for fmt, path, diff in rows:
        print(f"| {fmt} | {path} | {diff:.3g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
