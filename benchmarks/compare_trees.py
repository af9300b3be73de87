#!/usr/bin/env python3
"""Two checkouts of the plugin against each other: is a change to the code faster or slower?

A code change cannot be timed in one process (both trees register the same names), and two
separate runs differ by more than the few percent a refactor is held to. So each run of a worker
process times Detectron2's stock FPN and the plugin side by side (round-robin, same weights, same
inputs, the points of ``benchmark.py``), and the plugin/stock ratio carries the comparison:
stock's code is the same in every run, so it absorbs what the machine does between runs. The
parent starts the workers of the two trees in turn, in the order A B B A, A B B A, ... (so a
drift over time weighs on both alike), and prints per tree the runs' ratios (their geometric
mean and spread) and after/before.

Within a run, timed call i of stock and call i of the plugin are a pair; a run's ratio is the
geometric mean of its pairs' plugin/stock ratios, and after/before is the geometric mean of the
after runs' ratios over that of the before runs. Its 95% interval is a bootstrap over runs (runs
of each tree resampled with replacement, seeded), so a change is shown within a tolerance only
when the whole interval is (``--tolerance``, default 2%). ``--threads 1`` times single-threaded:
on a small VM a parallel region waits for its slowest thread, which scatters 2-thread timings.

    python benchmarks/compare_trees.py --before /path/to/old/checkout --after . --rounds 4

Each tree must be a checkout of this project (its ``fpn_plugin`` package is imported from there
through PYTHONPATH, ahead of an installed one; the worker prints which file it imported).
"""
import argparse
import copy
import json
import os
import random
import statistics
import subprocess
import sys

import torch

POINTS = ("neck_ms", "infer_b1_ms_per_image", "infer_b8_ms_per_image", "train_b4_ms")


def paired_ratio(stock, plugin):
    """Geometric mean of plugin[i] / stock[i] over the paired samples of one run."""
    return statistics.geometric_mean(p / s for s, p in zip(stock, plugin, strict=True))


def after_over_before(before, after, draws=2000, seed=0):
    """(estimate, low, high): geometric mean of the ``after`` run ratios over that of the
    ``before`` ones, and its 95% bootstrap interval (each tree's runs resampled with replacement,
    ``draws`` times, from a seeded generator)."""
    def ratio(b, a):
        return statistics.geometric_mean(a) / statistics.geometric_mean(b)

    rng = random.Random(seed)
    boot = sorted(ratio(rng.choices(before, k=len(before)), rng.choices(after, k=len(after))) for _ in range(draws))
    return ratio(before, after), boot[int(0.025 * draws)], boot[int(0.975 * draws) - 1]


def worker(h, w, repeats, points):
    """Times stock and plugin in this process; returns {"medians": {model: {point: median ms}},
    "paired": {point: this run's paired plugin/stock ratio}}."""
    from detectron2.config import get_cfg
    from detectron2.model_zoo import get_config_file
    from detectron2.modeling import build_model

    import fpn_plugin
    from benchmark import batch, point_functions, round_robin_samples  # this folder's: the same points

    cfg = get_cfg()
    fpn_plugin.add_fpn_paper_config(cfg)
    cfg.merge_from_file(get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    plugin_cfg = cfg.clone()
    plugin_cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_paper_backbone"
    plugin_cfg.MODEL.ROI_HEADS.NAME = "FPNPaperROIHeads"
    torch.manual_seed(0)
    models = {"stock": build_model(cfg)}
    models["plugin"] = build_model(plugin_cfg)
    models["plugin"].load_state_dict(copy.deepcopy(models["stock"].state_dict()))
    one, eight, four = batch(1, h, w, "cpu", False), batch(8, h, w, "cpu", False), batch(4, h, w, "cpu", True)
    fns = {name: point_functions(name, m, one, eight, four) for name, m in models.items()}
    out, paired = {name: {} for name in models}, {}
    for point in points:
        samples = round_robin_samples(fns, point, repeats)
        for name, ms in samples.items():
            out[name][point] = statistics.median(ms) / (8 if point == "infer_b8_ms_per_image" else 1)
        paired[point] = paired_ratio(samples["stock"], samples["plugin"])
    return {"fpn_plugin": fpn_plugin.__file__, "medians": out, "paired": paired}


def run_worker(tree, args):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--size", *map(str, args.size),
           "--repeats", str(args.repeats), "--points", *args.points]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"worker for {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="checkout of the code before the change")
    parser.add_argument("--after", default=".", help="checkout of the code after the change (default: here)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of A B B A (default 4: 8 runs per tree)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per point and model in a run")
    parser.add_argument("--size", nargs=2, type=int, default=[160, 256], metavar=("H", "W"))
    parser.add_argument("--points", nargs="+", default=list(POINTS), choices=POINTS, help="what to time (default all)")
    parser.add_argument("--threads", type=int, help="torch threads in each run (default: torch's)")
    parser.add_argument("--tolerance", type=float, default=0.02, help="after/before must lie within 1 +- this")
    parser.add_argument("--json", help="write every run's medians and ratios here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads {args.threads}: give 1 or more")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(*args.size, args.repeats, args.points)))
        return 0
    if not args.before:
        parser.error("--before is required")
    for tree in (args.before, args.after):
        if not os.path.isfile(os.path.join(tree, "fpn_plugin", "__init__.py")):
            parser.error(f"{tree} is not a checkout of this project (no fpn_plugin/__init__.py)")
    trees = {"before": args.before, "after": args.after}
    runs = {"before": [], "after": []}
    for r in range(args.rounds):
        for name in ("before", "after", "after", "before"):
            result = run_worker(trees[name], args)
            runs[name].append(result)
            print(f"round {r + 1} {name}: {result['fpn_plugin']}", file=sys.stderr)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.size[0]}x{args.size[1]}, "
          f"{args.rounds * 2} runs per tree, {args.repeats} paired calls per point in a run\n")
    print("| point | plugin/stock before: runs' geometric mean (min-max) | after | after/before (95% interval) "
          f"| within {args.tolerance:.0%} |")
    print("|---|---|---|---|---|")
    summary = {}
    for p in args.points:
        ratios = {n: [r["paired"][p] for r in runs[n]] for n in runs}
        est, low, high = after_over_before(ratios["before"], ratios["after"])
        within = 1 - args.tolerance <= low and high <= 1 + args.tolerance
        summary[p] = {"ratios": ratios, "after_over_before": est, "interval95": [low, high], "within": within}
        cells = [f"{statistics.geometric_mean(ratios[n]):.3f} "
                 f"({min(ratios[n]):.3f}-{max(ratios[n]):.3f})" for n in ("before", "after")]
        verdict = "yes" if within else ("no" if low > 1 + args.tolerance or high < 1 - args.tolerance else "not shown")
        print(f"| {p} | {cells[0]} | {cells[1]} | {est:.3f} ({low:.3f}-{high:.3f}) | {verdict} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": runs, "summary": summary}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
