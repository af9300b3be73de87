#!/usr/bin/env python3
"""Seconds per training iteration of whole recipes (model, input size, batch, data loader), side
by side in one process: one iteration of each recipe in turn, round-robin, so every recipe sees
the same machine load. Prints the median s/iter of each and its ratio to the first.

    python benchmarks/recipe_speed.py --iters 8 --warmup 2 \
        --recipe previous configs/fpn_paper.yaml MODEL.RESNETS.STEM_OUT_CHANNELS 64 \
            MODEL.RESNETS.RES2_OUT_CHANNELS 64 INPUT.CROP.SIZE "[320,320]" SOLVER.BASE_LR 0.02 \
        --recipe new configs/fpn_paper.yaml

A recipe is a name, a config file and optional overrides. The first iterations (``--warmup``)
of each are not counted: they include the data loader's start and one-time allocations.
"""
import argparse
import json
import statistics
import time

import torch


def build(config_file, opts):
    """(model, optimizer, data iterator, cfg) of a recipe, built as the trainer builds them."""
    from fpn_plugin.config import load_config
    from fpn_plugin.engine import Trainer

    cfg = load_config(config_file, opts)
    model = Trainer.build_model(cfg)
    model.train()
    optimizer = Trainer.build_optimizer(cfg, model)
    return model, optimizer, iter(Trainer.build_train_loader(cfg)), cfg


def step(model, optimizer, data):
    from detectron2.utils.events import EventStorage

    batch = next(data)
    start = time.perf_counter()
    with EventStorage():
        loss = sum(model(batch).values())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", nargs="+", action="append", required=True, metavar="NAME CONFIG [KEY VALUE ...]")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per recipe")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per recipe first")
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args(argv)
    for recipe in args.recipe:
        if len(recipe) < 2 or len(recipe) % 2:
            parser.error(f"--recipe {' '.join(recipe)}: give NAME CONFIG and KEY VALUE pairs")
    torch.manual_seed(0)
    runs = {r[0]: build(r[1], r[2:]) for r in args.recipe}
    times = {name: [] for name in runs}
    for i in range(args.warmup + args.iters):
        for name, (model, optimizer, data, _) in runs.items():
            t = step(model, optimizer, data)
            if i >= args.warmup:
                times[name].append(t)
    first = next(iter(times))
    base = statistics.median(times[first])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.iters} iterations per recipe "
          f"after {args.warmup} untimed, round-robin")
    print("| recipe | images/iter | median s/iter | ratio to " + first + " |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        cfg = runs[name][3]
        print(f"| {name} | {cfg.SOLVER.IMS_PER_BATCH} | {statistics.median(ts):.2f} | {statistics.median(ts) / base:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "seconds": times}, f, indent=2)


if __name__ == "__main__":
    main()
