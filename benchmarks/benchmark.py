#!/usr/bin/env python3
"""The plugin against stock Detectron2, in one process, same weights, same inputs.

Models: Detectron2's faster_rcnn_R_50_FPN_1x ("stock"); the same config with the plugin's backbone
and ROI heads ("plugin", stock weights loaded into it); and the plugin with its fast path
(channels-last + bf16 autocast, "fast"). With ``--bottom-up`` (a BACKBONE_REGISTRY name, e.g.
build_timm_backbone with ``--timm NAME``), all three stand on that bottom-up, and "stock" is
Detectron2's own ``FPN`` class built on the same bottom-up network, with the same weights. Points: (i) the neck alone on cached C2..C5, (ii)
inference at batch 1 and batch 8, (iii) one training iteration at batch 4 (time and peak memory).
Prints medians and ratios to stock; writes JSON with --json.

    python benchmarks/benchmark.py                       # CPU, small images
    python benchmarks/benchmark.py --device cuda         # 800x1216, TF32 on for stock and plugin
    python benchmarks/benchmark.py --bottom-up build_timm_backbone --timm convnext_atto
"""
import argparse
import copy
import json
import platform
import statistics
import sys
import time
from contextlib import contextmanager

import torch


def configs(device, bottom_up="", timm_name=""):
    from detectron2.model_zoo import get_config_file

    import fpn_plugin  # noqa: F401  (registers the plugin's backbone and ROI heads)
    from fpn_plugin.config import load_config

    stock = load_config(get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"), ["MODEL.DEVICE", device])
    if bottom_up:
        stock.MODEL.FPN_PAPER.BOTTOM_UP = bottom_up
        stock.MODEL.TIMM.NAME = timm_name
    plugin = stock.clone()
    plugin.MODEL.BACKBONE.NAME = "build_resnet_fpn_paper_backbone"
    plugin.MODEL.ROI_HEADS.NAME = "FPNPaperROIHeads"
    fast = plugin.clone()
    fast.MODEL.FPN_PAPER.FAST.CHANNELS_LAST = True
    fast.MODEL.FPN_PAPER.FAST.AUTOCAST = "bf16"
    return {"stock": stock, "plugin": plugin, "fast": fast}


def stock_fpn_on(plugin_backbone):
    """Detectron2's own FPN class on the plugin's bottom-up network (a copy: same weights), with the
    plugin neck's inputs and width: the stock model for a bottom-up Detectron2 has no builder for."""
    from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

    return FPN(bottom_up=copy.deepcopy(plugin_backbone.bottom_up), in_features=plugin_backbone.in_features,
               out_channels=plugin_backbone.output_shape()["p2"].channels, top_block=LastLevelMaxPool())


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def point_functions(name, model, one, eight, four):
    """The measured calls for one model: the neck alone, inference at batch 1 and 8, one
    training iteration at batch 4 (forward, backward, SGD step)."""
    from detectron2.utils.events import EventStorage

    with torch.no_grad():
        model.eval()
        x = model.preprocess_image(one).tensor
        if getattr(model.backbone, "fast_path", {}).get("channels_last"):
            x = x.contiguous(memory_format=torch.channels_last)
        feats = model.backbone.bottom_up(x)

    def run_neck():
        # The neck as the model calls it (with its fast-path hooks), on fixed C2..C5.
        with cached_bottom_up(model.backbone, feats):
            return model.backbone(x)

    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)

    def inference(inputs):
        def run():
            model.eval()
            with torch.no_grad():
                model(inputs)
        return run

    def neck_only():
        with torch.no_grad():
            run_neck()

    def step():
        model.train()
        with EventStorage():
            loss = sum(model(four).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return {"neck_ms": neck_only, "infer_b1_ms_per_image": inference(one),
            "infer_b8_ms_per_image": inference(eight), "train_b4_ms": step}


def peak_memory_mb(fn, device):
    """Peak memory of one call: CUDA allocator peak, or the process's peak RSS growth on CPU."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM, the peak resident set size
        base = _status_kb("VmRSS")
        fn()
        return (_status_kb("VmHWM") - base) / 1024
    except OSError:
        return float("nan")


def _status_kb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


class CachedBottomUp(torch.nn.Module):
    """Stands in for a bottom-up network: returns fixed C2..C5, so the neck runs alone."""

    def __init__(self, real, features):
        super().__init__()
        self.real, self.features = real, features

    def forward(self, x):
        return self.features

    def output_shape(self):
        return self.real.output_shape()


@contextmanager
def cached_bottom_up(backbone, features):
    """Within the block, ``backbone.bottom_up`` returns ``features`` (stock FPN and plugin neck
    alike call ``self.bottom_up(x)`` first)."""
    real = backbone.bottom_up
    backbone.bottom_up = CachedBottomUp(real, features)
    try:
        yield
    finally:
        backbone.bottom_up = real


def batch(n, h, w, device, train):
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(n)
    out = []
    for _ in range(n):
        d = {"image": torch.randint(0, 256, (3, h, w), generator=g).float().to(device), "height": h, "width": w}
        if train:
            inst = Instances((h, w))
            xy = torch.rand(8, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
            wh = torch.rand(8, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4]) + 8
            inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], 1).to(device))
            inst.gt_classes = torch.randint(0, 80, (8,), generator=g).to(device)
            d["instances"] = inst
        out.append(d)
    return out


def round_robin_samples(fns, point, repeats, warmup=1, device="cpu"):
    """Milliseconds of every timed call of ``fns[model][point]()``, per model, in call order.
    The models take turns repeat by repeat, so that none runs on a colder cache or a busier
    machine than another, and sample i of one model is paired with sample i of each other."""
    samples = {name: [] for name in fns}
    for name in fns:
        for _ in range(warmup):
            fns[name][point]()
    for _ in range(repeats):
        for name in fns:
            sync(device)
            start = time.perf_counter()
            fns[name][point]()
            sync(device)
            samples[name].append((time.perf_counter() - start) * 1000.0)
    return samples


def round_robin(fns, point, repeats, warmup=1, device="cpu"):
    """Median milliseconds of ``fns[model][point]()`` per model (see :func:`round_robin_samples`)."""
    return {name: statistics.median(v) for name, v in round_robin_samples(fns, point, repeats, warmup, device).items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", nargs=2, type=int, help="H W (default 800 1216 on CUDA, 320 480 on CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per point (default 20 CUDA, 5 CPU)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--bottom-up", default="", help="a BACKBONE_REGISTRY name for MODEL.FPN_PAPER.BOTTOM_UP")
    parser.add_argument("--timm", default="", help="MODEL.TIMM.NAME, with --bottom-up build_timm_backbone")
    args = parser.parse_args(argv)
    from detectron2.modeling import build_model

    device = args.device
    h, w = args.size or ((800, 1216) if device == "cuda" else (320, 480))
    repeats = args.repeats or (20 if device == "cuda" else 5)
    warmup = 5 if device == "cuda" else 1
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    cfgs = configs(device, args.bottom_up, args.timm)
    stock = build_model(cfgs["stock"])
    if args.bottom_up:
        stock.backbone = stock_fpn_on(build_model(cfgs["plugin"]).backbone).to(device)
    weights = copy.deepcopy(stock.state_dict())
    models = {"stock": stock}
    for name in ("plugin", "fast"):
        models[name] = build_model(cfgs[name])
        models[name].load_state_dict(weights)  # the same weights in all three

    one, eight, four = batch(1, h, w, device, False), batch(8, h, w, device, False), batch(4, h, w, device, True)
    fns = {name: point_functions(name, model, one, eight, four) for name, model in models.items()}
    results = {name: {} for name in models}
    for point in fns["stock"]:
        n = repeats if point in ("neck_ms", "infer_b1_ms_per_image") else max(3, repeats // 2)
        for name, ms in round_robin(fns, point, n, warmup, device).items():
            results[name][point] = ms / (8 if point == "infer_b8_ms_per_image" else 1)
    for name, model in models.items():
        results[name]["train_b4_peak_mb"] = peak_memory_mb(fns[name]["train_b4_ms"], device)
        model.load_state_dict(weights)

    points = list(results["stock"])
    env = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "size": [h, w], "repeats": repeats,
           "bottom_up": args.bottom_up or "ResNet-50", "timm": args.timm}
    print(f"{env}\n")
    print("| point | stock | plugin | plugin/stock | fast | fast/stock |\n|---|---|---|---|---|---|")
    for p in points:
        s, pl, fa = (results[n][p] for n in ("stock", "plugin", "fast"))
        print(f"| {p} | {s:.1f} | {pl:.1f} | {pl / s:.3f} | {fa:.1f} | {fa / s:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
