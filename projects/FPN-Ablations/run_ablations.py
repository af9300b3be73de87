#!/usr/bin/env python3
"""Train and evaluate rows of the FPN paper's Tables 1-3 over several seeds and write the tables,
summary.json and charts.

    python projects/FPN-Ablations/run_ablations.py                      # every row, 3 seeds
    python projects/FPN-Ablations/run_ablations.py --rows rpn/c fast/c  # some rows
    python projects/FPN-Ablations/run_ablations.py --seeds 5 --opts SOLVER.MAX_ITER 1000

Seed i of a row (i = 0 .. --seeds - 1) trains with SEED 42 + 1000 i through the repository's
train_net.py in <output>/<row>/seed<SEED>/. A seed whose results.json exists is finished and never
re-run; an unfinished one resumes from its last checkpoint. Seed i of a Fast R-CNN row (Table 2)
trains on the proposals that seed i of row rpn/c writes, and records their sha256: a call whose
tables would hold a seed trained on other proposals than rpn/c holds now is refused. Every seed
records its setting (--train, --test, --opts), and a call whose tables would hold a seed trained
in another setting than the call's is refused too: a row's seeds are of one configuration.
``--known results/summary.json`` counts the seeds recorded in a summary an earlier call wrote
(this folder's committed results, say) as finished too, where the output holds no results of
theirs: a new checkout goes on with the set.
"""
import argparse
import hashlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time

import ablation_stats  # beside this file; the script's folder is first on sys.path

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

SEED_BASE, SEED_STEP = 42, 1000  # seed i trains with SEED = SEED_BASE + SEED_STEP * i



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


def positive_int(text):
    """The type of --seeds: a whole number, 1 or more."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"the number of seeds per row is a whole number, 1 or more, not {text!r}")
    return value


def seed_of(index):
    return SEED_BASE + SEED_STEP * index


def seed_values(n):
    """The SEEDs of seeds 0 .. n-1; a call with more seeds keeps the first ones, so they are reused."""
    return [seed_of(i) for i in range(n)]


def row_dir(output, row):
    return os.path.join(output, row.replace("/", "_"))


def seed_dir(output, row, seed):
    return os.path.join(row_dir(output, row), f"seed{seed}")


def proposal_files(output, seed, train_set, test_set):
    """The files that seed ``seed`` of row rpn/c writes: its proposals on the training and the test set."""
    base = seed_dir(output, "rpn/c", seed)
    return (os.path.join(base, "proposals_train", "inference", train_set, "box_proposals.pkl"),
            os.path.join(base, "inference", test_set, "box_proposals.pkl"))


def proposal_record(output, seed, train_set, test_set):
    """{"train": sha256, "test": sha256} of the proposal files seed ``seed`` of row rpn/c holds now,
    or None while either is missing: which proposals a Fast R-CNN seed trains on."""
    paths = proposal_files(output, seed, train_set, test_set)
    if not all(os.path.isfile(p) for p in paths):
        return None
    record = {}
    for key, path in zip(("train", "test"), paths):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        record[key] = digest.hexdigest()
    return record


def setting_of(args):
    """What a seed trains in besides its row's config and SEED: {"train", "test", "opts"}."""
    return {"train": args.train, "test": args.test, "opts": list(args.opts)}


def other_settings(per_seed, setting, output):
    """One message per seed in ``per_seed`` (row -> {seed: results}) whose recorded setting is not
    ``setting``, this call's: a row would mix two datasets or configurations. Seeds without a
    record (finished before it existed) pass."""
    return [f"{row} seed {seed} was trained with {ablation_stats.describe(results['setting'])}, this call "
            f"asks for {ablation_stats.describe(setting)}, and a row would mix the two. Run with the seed's "
            "--train, --test and --opts, write to another --output, or train the seed again with these "
            f"(remove {seed_dir(output, row, seed)}, and its entry where --known records it)"
            for row, runs in per_seed.items() for seed, results in sorted(runs.items())
            if results.get("setting") is not None and results["setting"] != setting]


def mixed_seeds(per_seed, output, train_set, test_set):
    """One message per Fast R-CNN seed in ``per_seed`` (row -> {seed: results}) whose recorded
    proposals are not those its seed of rpn/c holds now: rpn/c was trained again after it, and a
    row would mix two sets of proposals. Seeds without a record, or whose rpn/c seed has no
    proposals in ``output``, cannot be checked and pass."""
    messages, current = [], {}
    for row, runs in per_seed.items():
        if not row.startswith("fast/"):
            continue
        for seed, results in sorted(runs.items()):
            if "proposals" not in results:
                continue
            if seed not in current:
                current[seed] = proposal_record(output, seed, train_set, test_set)
            if current[seed] is not None and results["proposals"] != current[seed]:
                messages.append(
                    f"{row} seed {seed} was trained on other proposals than seed {seed} of rpn/c holds now "
                    f"in {row_dir(output, 'rpn/c')}; rpn/c was trained again after it. Train the seed again on "
                    f"these (remove {seed_dir(output, row, seed)}, and its entry where --known records it), "
                    "or restore the proposals it was trained on")
    return messages


def train_net(*args, env):
    cmd = [sys.executable, TRAIN_NET, *map(str, args)]
    logger.info("$ %s", " ".join(cmd))
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)


def pin(path, value):
    """Records ``value`` (JSON) in ``path`` at a seed's first attempt and returns False; at a later
    attempt returns True, recording nothing, when ``path`` holds another value: the attempt would
    resume the seed on other inputs than it began on."""
    if os.path.isfile(path) and read_json(path) != value:
        return True
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomically(path, json.dumps(value, indent=2))
    return False


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_atomically(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def known_seeds(path):
    """row -> {seed: results} of every seed recorded in ``path``, a summary.json this runner wrote,
    each in the shape of a seed's results.json (task -> metric -> value, "seed", "seconds")."""
    try:
        summary = read_json(path)
        known = {}
        for table in summary["tables"].values():
            for row, entry in table["rows"].items():
                if row not in ROWS:
                    raise KeyError(f"unknown row {row!r}")
                for seed, metrics in entry["per_seed"].items():
                    known.setdefault(row, {})[int(seed)] = results = {
                        # summary.json writes a NaN metric as null; a results.json holds NaN
                        table["task"]: {m: math.nan if v is None else float(v) for m, v in metrics.items()},
                        "seed": int(seed),
                        "seconds": float(entry["seconds"][seed])}
                    for key in ablation_stats.RECORDED:  # what the seed trained on, where recorded
                        if seed in entry.get(key, {}):
                            results[key] = entry[key][seed]
    except OSError as e:
        raise AblationError(f"--known {path}: cannot be read ({e.strerror or e})") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise AblationError(
            f"--known {path} is not a summary.json this runner wrote ({type(e).__name__}: {e})") from None
    return known


def run_seed(row, index, args, env):
    """Train and evaluate seed ``index`` of one row unless finished (in the output, or recorded in
    ``args.known``); returns its results dict, with "seed" and "seconds" (wall time, earlier
    interrupted attempts of this seed included)."""
    seed = seed_of(index)
    out = seed_dir(args.output, row, seed)
    done = os.path.join(out, "results.json")
    if os.path.isfile(done):
        logger.info("%s seed %d: finished earlier, not re-run (%s)", row, seed, done)
        return read_json(done)
    if seed in args.known.get(row, {}):
        logger.info("%s seed %d: finished earlier, not re-run (recorded in %s)", row, seed, args.known_path)
        return args.known[row][seed]
    config = os.path.join(HERE, "configs", ROWS[row][0])
    opts = ["OUTPUT_DIR", out, "SEED", seed, "DATASETS.TRAIN", f"('{args.train}',)",
            "DATASETS.TEST", f"('{args.test}',)"]
    if row.startswith("fast/"):
        train_props, test_props = proposal_files(args.output, seed, args.train, args.test)
        missing = [p for p in (train_props, test_props) if not os.path.isfile(p)]
        if missing:
            recorded = (f" (its metrics are recorded in {args.known_path}, its proposals are not: run this "
                        f"without --known)") if seed in args.known.get("rpn/c", {}) else ""
            raise AblationError(
                f"{row} seed {seed} trains on the proposals of seed {seed} of row rpn/c, and {missing[0]} "
                f"does not exist; make them first{recorded}: {os.path.relpath(__file__, ROOT)} --rows rpn/c "
                f"--seeds {index + 1} --output {args.output} --train {args.train} --test {args.test}"
            )
        opts += ["DATASETS.PROPOSAL_FILES_TRAIN", f"('{train_props}',)",
                 "DATASETS.PROPOSAL_FILES_TEST", f"('{test_props}',)"]
        # the proposals the seed trains on, recorded at its first attempt: an attempt that resumes
        # on other proposals (rpn/c trained again meanwhile) would mix two sets in one model
        proposals = proposal_record(args.output, seed, args.train, args.test)
        recorded = os.path.join(out, "proposals.json")
        if pin(recorded, proposals):
            raise AblationError(
                f"{row} seed {seed} began training on other proposals than seed {seed} of rpn/c holds now "
                f"({recorded}); rpn/c was trained again after it. Remove {out} to train the seed from the "
                "start on these, or restore the proposals it began on")
    # the setting too: a resume in another would finish a model begun on other data or config
    recorded = os.path.join(out, "setting.json")
    if pin(recorded, setting_of(args)):
        raise AblationError(
            f"{row} seed {seed} began training with {ablation_stats.describe(read_json(recorded))} "
            f"({recorded}), this call asks for {ablation_stats.describe(setting_of(args))}. Run with the "
            f"seed's setting to resume it, or remove {out} to train it from the start with these")
    spent = os.path.join(out, "seconds_spent")  # wall time of earlier attempts that did not finish
    earlier = float(read_json(spent)) if os.path.isfile(spent) else 0.0
    start = time.perf_counter()
    try:
        train_net("--config-file", config, "--resume", *opts, *args.opts, env=env)
        if row == "rpn/c":  # proposals on the training set for Table 2 (2000 per image, Sec. 5.2)
            train_net("--config-file", config, "--eval-only", "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"),
                      *opts, "OUTPUT_DIR", os.path.join(out, "proposals_train"), "DATASETS.TEST",
                      f"('{args.train}',)", "MODEL.RPN.POST_NMS_TOPK_TEST", 2000, *args.opts, env=env)
    except BaseException:  # failed or interrupted: keep its time for the attempt that finishes
        os.makedirs(out, exist_ok=True)
        write_atomically(spent, json.dumps(round(earlier + time.perf_counter() - start, 1)))
        raise
    results = read_json(os.path.join(out, "eval_results.json"))
    results["seed"] = seed
    results["seconds"] = round(earlier + time.perf_counter() - start, 1)
    results["setting"] = setting_of(args)
    if row.startswith("fast/"):
        results["proposals"] = proposals
    write_atomically(done, json.dumps(results, indent=2))  # the seed counts as finished once this exists
    return results


def finished(output, seeds, known=None):
    """row -> {seed: results} of every finished seed among ``seeds``, for every row on disk or in
    ``known`` (row -> {seed: results}; a seed's results on disk win)."""
    per_seed = {row: {s: r for s, r in runs.items() if s in seeds} for row, runs in (known or {}).items()}
    for row in ROWS:
        old = os.path.join(row_dir(output, row), "results.json")
        if os.path.isfile(old):
            logger.warning("%s: %s is from the earlier single-seed layout and is ignored", row, old)
        for seed in seeds:
            done = os.path.join(seed_dir(output, row, seed), "results.json")
            if os.path.isfile(done):
                per_seed.setdefault(row, {})[seed] = read_json(done)
    return per_seed


def write_outputs(per_seed, seeds, output):
    """summary.json, TABLES.md and table{1,2,3}.png; returns TABLES.md's lines."""
    summary = ablation_stats.summarize(per_seed, ROWS, TABLES, PAPER, seeds)
    write_atomically(os.path.join(output, "summary.json"), json.dumps(summary, indent=2, allow_nan=False))
    lines = ablation_stats.markdown(summary)
    write_atomically(os.path.join(output, "TABLES.md"), "\n".join(lines) + "\n")
    write_charts(summary, output)
    return lines


def write_charts(summary, output):
    """Writes table1.png..table3.png under `output`, one per table in the summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for i, prefix in enumerate(TABLES, 1):
        table = summary["tables"].get(prefix)
        if table is None:
            continue
        fig = chart(table)
        fig.savefig(os.path.join(output, f"table{i}.png"), dpi=90)
        plt.close(fig)


def chart(table):
    """One table's figure: per row and metric, the measured mean with its standard deviation as
    error bar (left; none where the spread is undefined, one seed) beside the paper's value (right)."""
    import matplotlib.pyplot as plt

    metrics, entries = table["metrics"], list(table["rows"].values())
    width = 0.8 / len(entries)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for j, e in enumerate(entries):
        xs = [x + j * width for x in range(len(metrics))]
        mean = [math.nan if e["mean"][m] is None else e["mean"][m] for m in metrics]
        # NaN, not 0, for an undefined spread: matplotlib draws no bar and no caps for NaN,
        # where 0 would draw caps that read as a spread of zero
        std = [math.nan if e["std"][m] is None else e["std"][m] for m in metrics]
        axes[0].bar(xs, mean, width, yerr=std, capsize=2, label=f"{e['label']} (n={e['n']})")
        axes[1].bar(xs, [e["paper"][m] for m in metrics], width, label=e["label"])
    for ax, label in zip(axes, ("measured: mean ± std over seeds", "paper, COCO minival")):
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(metrics))], metrics)
        ax.set_title(label)
    # below the plots, where it hides no bar and no error bar (inside, it covered the tallest ones)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=3, frameon=False)
    fig.suptitle(table["title"])
    # room at the bottom for the legend: about 6% of the figure's height per line of three rows
    fig.tight_layout(rect=(0, 0.06 * math.ceil(len(entries) / 3) + 0.02, 1, 1))
    return fig


def refuse_mixed(per_seed, args):
    """Logs why and returns True when a seed among the finished ones (``per_seed``, as finished()
    gives them) was trained in another setting than this call's (--train, --test, --opts), or a
    Fast R-CNN seed on other proposals than its seed of rpn/c holds now: a row of the tables would
    mix two configurations or two sets of proposals, so none are written."""
    mixed = (other_settings(per_seed, setting_of(args), args.output)
             + mixed_seeds(per_seed, args.output, args.train, args.test))
    for message in mixed:
        logger.error("%s", message)
    return bool(mixed)


def exit_on_sigterm(signum, frame):
    """`kill` (SIGTERM) stops the runner as Ctrl-C does: by an exception, so the seed in flight
    records its time in seconds_spent and subprocess.run stops its train_net.py; Python's default
    for SIGTERM ends the process on the spot and the attempt's time would be lost."""
    raise SystemExit(128 + signum)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), help=f"rows to run: {', '.join(ROWS)}")
    parser.add_argument("--seeds", type=positive_int, default=3,
                        help=f"runs per row, with SEED {SEED_BASE} + {SEED_STEP} i (default 3)")
    parser.add_argument("--output", default=os.path.join(ROOT, "output", "fpn_ablations"))
    parser.add_argument("--train", default="fpn_shapes_train", help="training dataset (registered name)")
    parser.add_argument("--test", default="fpn_shapes_val", help="evaluation dataset (registered name)")
    parser.add_argument("--known", metavar="SUMMARY", help="a summary.json an earlier call wrote: its seeds "
                        "count as finished where the output has no results of theirs")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides for every row")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    try:
        rows = parse_rows(args.rows)
    except AblationError as e:
        parser.error(str(e))
    if "SEED" in args.opts[::2]:
        parser.error("--opts SEED: the runner sets SEED itself, one per seed; choose their number with --seeds")
    args.known_path, args.known = args.known, {}
    if args.known_path:
        try:
            args.known = known_seeds(args.known_path)
        except AblationError as e:
            parser.error(str(e))
    args.output = os.path.abspath(args.output)
    os.makedirs(args.output, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    seeds = seed_values(args.seeds)
    if refuse_mixed(finished(args.output, seeds, args.known), args):  # before anything trains
        return 2
    previous = signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        for row in rows:
            for index in range(args.seeds):
                try:
                    run_seed(row, index, args, env)
                except AblationError as e:
                    logger.error("%s", e)
                    return 2
    finally:  # a caller's own handler comes back (tests call main in their process)
        signal.signal(signal.SIGTERM, previous)
    # Finished seeds of earlier calls, also of rows not asked for now, join the tables too.
    per_seed = finished(args.output, seeds, args.known)
    if refuse_mixed(per_seed, args):  # rpn/c trained in this call, after a Fast R-CNN seed of its seed
        return 2
    for line in write_outputs(per_seed, seeds, args.output):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
