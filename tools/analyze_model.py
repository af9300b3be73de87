#!/usr/bin/env python3
"""Parameters and FLOPs per component (bottom-up, neck, RPN, ROI heads) with Detectron2's
flop-count tools, for the 256 and 128 variants and for every neck in the neck registry.

    python tools/analyze_model.py [--config-file configs/fpn_paper.yaml] [--size 800 1216] [--json out.json]
"""
import argparse
import json
import os
import sys

from fpn_plugin.engine.atomic import atomic_output
from fpn_plugin.engine.checked_io import CliError
from fpn_plugin.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPONENTS = ("backbone.bottom_up", "neck", "proposal_generator", "roi_heads")


def fit_heads_to_neck(cfg):
    """Point the RPN and ROI heads at whatever levels the configured neck outputs."""
    from detectron2.layers import ShapeSpec
    from fpn_plugin.modeling.bottom_up import build_bottom_up
    from fpn_plugin.modeling.necks import build_neck

    levels = list(build_neck(cfg, build_bottom_up(cfg, ShapeSpec(channels=3))).output_shape())
    cfg.MODEL.RPN.IN_FEATURES = levels
    cfg.MODEL.ROI_HEADS.IN_FEATURES = [f for f in levels if f != "p6"]
    sizes = [32, 64, 128, 256, 512]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[s] for s in sizes] if len(levels) == len(sizes) else [sizes]
    return cfg


def analyze(cfg, size):
    """{component: (params, GFLOPs)} for one (3, H, W) image; the neck is the backbone minus its bottom-up."""
    import torch
    from detectron2.modeling import build_model
    from detectron2.utils.analysis import FlopCountAnalysis, parameter_count

    model = build_model(cfg).eval()
    # a fixed noise image: proposals survive NMS as on a real image, so the heads' FLOPs are typical
    image = torch.randint(0, 256, (3, *size), generator=torch.Generator().manual_seed(0)).float()
    flops = FlopCountAnalysis(model, [{"image": image}])
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    # Detectron2 traces the model through an adapter, whose submodule is named "model".
    by_module = {k[len("model."):]: v for k, v in flops.by_module().items() if k.startswith("model.")}
    params = parameter_count(model)
    out = {}
    for comp in COMPONENTS:
        if comp == "neck":
            p = params["backbone"] - params["backbone.bottom_up"]
            f = by_module["backbone"] - by_module["backbone.bottom_up"]
        else:
            p, f = params[comp], by_module[comp]
        out[comp] = (int(p), f / 1e9)
    out["total"] = (int(params[""]), flops.total() / 1e9)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=os.path.join(ROOT, "configs", "Base-FPN-Paper.yaml"))
    parser.add_argument("--size", nargs=2, type=int, default=[800, 1216], metavar=("H", "W"))
    parser.add_argument("--json", help="also write the numbers here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    args = parser.parse_args(argv)
    try:
        from fpn_plugin import NECK_REGISTRY

        widths = lambda d, out: ["MODEL.FPN_PAPER.TOP_DOWN_CHANNELS", d, "MODEL.FPN_PAPER.OUT_CHANNELS", out]  # noqa: E731
        variants = {"256 (paper)": widths(256, 256), "128 outputs": widths(256, 128)}
        for name in sorted(n for n, _ in NECK_REGISTRY):
            if name != "PaperFPN":
                variants[f"neck {name}"] = ["MODEL.FPN_PAPER.NECK", name]
        results = {}
        for label, opts in variants.items():
            cfg = load_config(args.config_file, list(args.opts) + opts)
            cfg.MODEL.DEVICE = "cpu"
            results[label] = analyze(fit_heads_to_neck(cfg), args.size)
        if args.json:
            with atomic_output(args.json) as tmp, open(tmp, "w") as f:
                json.dump({k: {c: {"params": p, "gflops": g} for c, (p, g) in v.items()} for k, v in results.items()}, f, indent=2)
    except (CliError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cols = list(COMPONENTS) + ["total"]
    print(f"Parameters (M) / GFLOPs per component, one {args.size[0]}x{args.size[1]} image\n")
    print("| variant | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for label, r in results.items():
        print(f"| {label} | " + " | ".join(f"{r[c][0] / 1e6:.2f} / {r[c][1]:.1f}" for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
