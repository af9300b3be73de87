#!/usr/bin/env python3
"""Train and evaluate rows of the FPN paper's Tables 1-3 and write the tables and charts.

    python projects/FPN-Ablations/run_ablations.py                      # every row
    python projects/FPN-Ablations/run_ablations.py --rows rpn/c fast/c  # some rows
    python projects/FPN-Ablations/run_ablations.py --opts SOLVER.MAX_ITER 1000

Each row trains with the repository's train_net.py in its own folder under --output. A row
whose results.json exists is finished and never re-run; an unfinished one resumes from its
last checkpoint. Fast R-CNN rows (Table 2) train on the proposals that row rpn/c writes.
"""
import argparse
import json
import logging
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TRAIN_NET = os.path.join(ROOT, "train_net.py")

logger = logging.getLogger("fpn_ablations")

# row id -> (config, the paper's row label). Order matters: rpn/c makes Table 2's proposals.
ROWS = {
    "rpn/a": ("rpn_a_c4.yaml", "(a) conv4 (C4), single scale"),
    "rpn/b": ("rpn_b_c5.yaml", "(b) conv5 (C5), single scale"),
    "rpn/c": ("rpn_c_fpn.yaml", "(c) FPN {P2..P6}"),
    "rpn/d": ("rpn_d_bottom_up.yaml", "(d) bottom-up pyramid only"),
    "rpn/e": ("rpn_e_no_lateral.yaml", "(e) top-down, no lateral"),
    "rpn/f": ("rpn_f_p2.yaml", "(f) only finest level P2"),
    "fast/a": ("fast_a_c4.yaml", "(a) C4 baseline, conv5 head"),
    "fast/b": ("fast_b_c5.yaml", "(b) C5, 2fc head"),
    "fast/c": ("fast_c_fpn.yaml", "(c) FPN {P2..P5}, 2fc head"),
    "fast/d": ("fast_d_bottom_up.yaml", "(d) bottom-up pyramid only"),
    "fast/e": ("fast_e_no_lateral.yaml", "(e) top-down, no lateral"),
    "fast/f": ("fast_f_p2.yaml", "(f) only P2"),
    "e2e/a": ("e2e_a_c4.yaml", "(a) C4"),
    "e2e/b": ("e2e_b_c5.yaml", "(b) C5"),
    "e2e/c": ("e2e_c_fpn.yaml", "(c) FPN"),
}

TABLES = {
    "rpn": ("Table 1: RPN, bounding-box proposals", "box_proposals",
            ["AR@100", "AR@1000", "ARs@1000", "ARm@1000", "ARl@1000"]),
    "fast": ("Table 2: Fast R-CNN on the fixed proposals of Table 1 (c)", "bbox",
             ["AP50", "AP", "APs", "APm", "APl"]),
    "e2e": ("Table 3: Faster R-CNN, end to end", "bbox", ["AP50", "AP", "APs", "APm", "APl"]),
}

# The paper's COCO minival numbers, in the metric order of TABLES.
PAPER = {
    "rpn/a": [36.1, 48.3, 32.0, 58.7, 62.2], "rpn/b": [36.3, 44.9, 25.3, 55.5, 64.2],
    "rpn/c": [44.0, 56.3, 44.9, 63.4, 66.2], "rpn/d": [37.4, 49.5, 30.5, 59.9, 68.0],
    "rpn/e": [34.5, 46.1, 26.5, 57.4, 64.7], "rpn/f": [38.4, 51.3, 35.1, 59.7, 67.6],
    "fast/a": [54.7, 31.9, 15.7, 36.5, 45.5], "fast/b": [52.9, 28.8, 11.9, 32.4, 43.4],
    "fast/c": [56.9, 33.9, 17.8, 37.7, 45.8], "fast/d": [44.9, 24.9, 10.9, 24.4, 38.5],
    "fast/e": [54.0, 31.3, 13.3, 35.2, 45.3], "fast/f": [56.3, 33.4, 17.3, 37.3, 45.6],
    "e2e/a": [53.1, 31.6, 13.2, 35.6, 47.1], "e2e/b": [51.7, 28.0, 9.6, 31.9, 43.1],
    "e2e/c": [56.9, 33.9, 17.8, 37.7, 45.8],
}


class AblationError(RuntimeError):
    """A row that cannot run; the message says why and what to do."""


def parse_rows(names):
    """Row ids in ROWS order; 'rpn', 'fast', 'e2e' select a whole table."""
    chosen = set()
    for name in names:
        matches = [r for r in ROWS if r == name or r.split("/")[0] == name]
        if not matches:
            raise AblationError(f"unknown row {name!r}; valid rows: {', '.join(ROWS)} (or rpn, fast, e2e)")
        chosen.update(matches)
    return [r for r in ROWS if r in chosen]


def row_dir(output, row):
    return os.path.join(output, row.replace("/", "_"))


def proposal_files(output, train_set, test_set):
    """The files row rpn/c writes: its proposals on the training and the test set."""
    base = row_dir(output, "rpn/c")
    return (os.path.join(base, "proposals_train", "inference", train_set, "box_proposals.pkl"),
            os.path.join(base, "inference", test_set, "box_proposals.pkl"))


def train_net(*args, env):
    cmd = [sys.executable, TRAIN_NET, *map(str, args)]
    logger.info("$ %s", " ".join(cmd))
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)


def run_row(row, args, env):
    """Train and evaluate one row unless finished; returns its results dict."""
    out = row_dir(args.output, row)
    done = os.path.join(out, "results.json")
    if os.path.isfile(done):
        logger.info("%s: finished earlier, not re-run (%s)", row, done)
        with open(done) as f:
            return json.load(f)
    config = os.path.join(HERE, "configs", ROWS[row][0])
    opts = ["OUTPUT_DIR", out, "DATASETS.TRAIN", f"('{args.train}',)", "DATASETS.TEST", f"('{args.test}',)"]
    if row.startswith("fast/"):
        train_props, test_props = proposal_files(args.output, args.train, args.test)
        missing = [p for p in (train_props, test_props) if not os.path.isfile(p)]
        if missing:
            raise AblationError(
                f"{row} trains on the proposals of row rpn/c, and {missing[0]} does not exist; "
                f"make them first: {os.path.relpath(__file__, ROOT)} --rows rpn/c --output {args.output}"
            )
        opts += ["DATASETS.PROPOSAL_FILES_TRAIN", f"('{train_props}',)",
                 "DATASETS.PROPOSAL_FILES_TEST", f"('{test_props}',)"]
    start = time.perf_counter()
    train_net("--config-file", config, "--resume", *opts, *args.opts, env=env)
    if row == "rpn/c":  # proposals on the training set for Table 2 (2000 per image, Sec. 5.2)
        train_net("--config-file", config, "--eval-only", "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"),
                  *opts, "OUTPUT_DIR", os.path.join(out, "proposals_train"), "DATASETS.TEST",
                  f"('{args.train}',)", "MODEL.RPN.POST_NMS_TOPK_TEST", 2000, *args.opts, env=env)
    with open(os.path.join(out, "eval_results.json")) as f:
        results = json.load(f)
    results["seconds"] = round(time.perf_counter() - start, 1)
    with open(done + ".tmp", "w") as f:
        json.dump(results, f, indent=2)
    os.replace(done + ".tmp", done)  # the row counts as finished only once this file exists
    return results


def write_tables(results, output):
    """TABLES.md with measured and paper numbers side by side, and table{1,2,3}.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = []
    for i, (prefix, (title, task, metrics)) in enumerate(TABLES.items(), 1):
        rows = [r for r in ROWS if r.startswith(prefix + "/") and r in results]
        if not rows:
            continue
        lines += [f"## {title}", "", "| row | " + " | ".join(f"{m} (paper)" for m in metrics) + " | minutes |",
                  "|---|" + "---|" * (len(metrics) + 1)]
        measured = {r: [results[r].get(task, {}).get(m, float("nan")) for m in metrics] for r in rows}
        for r in rows:
            cells = [f"{v:.1f} ({p})" for v, p in zip(measured[r], PAPER[r])]
            lines.append(f"| {ROWS[r][1]} | " + " | ".join(cells) + f" | {results[r]['seconds'] / 60:.1f} |")
        lines.append("")
        fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=False)
        for ax, (label, data) in zip(axes, (("measured, embedded dataset", measured),
                                             ("paper, COCO minival", {r: PAPER[r] for r in rows}))):
            width = 0.8 / len(rows)
            for j, r in enumerate(rows):
                ax.bar([x + j * width for x in range(len(metrics))], data[r], width, label=ROWS[r][1])
            ax.set_xticks([x + 0.4 - width / 2 for x in range(len(metrics))], metrics)
            ax.set_title(label)
        axes[0].legend(fontsize=7)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(os.path.join(output, f"table{i}.png"), dpi=90)
        plt.close(fig)
    with open(os.path.join(output, "TABLES.md"), "w") as f:
        f.write("\n".join(lines))
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), help=f"rows to run: {', '.join(ROWS)}")
    parser.add_argument("--output", default=os.path.join(ROOT, "output", "fpn_ablations"))
    parser.add_argument("--train", default="fpn_shapes_train", help="training dataset (registered name)")
    parser.add_argument("--test", default="fpn_shapes_val", help="evaluation dataset (registered name)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides for every row")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    try:
        rows = parse_rows(args.rows)
    except AblationError as e:
        parser.error(str(e))
    args.output = os.path.abspath(args.output)
    os.makedirs(args.output, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    results = {}
    for row in rows:
        try:
            results[row] = run_row(row, args, env)
        except AblationError as e:
            logger.error("%s", e)
            return 2
    # Finished rows of earlier calls join the tables too.
    for row in ROWS:
        done = os.path.join(row_dir(args.output, row), "results.json")
        if row not in results and os.path.isfile(done):
            with open(done) as f:
                results[row] = json.load(f)
    for line in write_tables(results, args.output):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
