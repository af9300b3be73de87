"""The statistics and the text of the ablation tables: mean and spread over seeds, the rule that
says which gaps are real, summary.json's content and TABLES.md. No training, no plotting here.

Spread is the sample standard deviation (n - 1 in the denominator). With one seed it is
undefined: None here, null in summary.json, "n/a" in the tables, and no gap is judged.
"""
import math

RULE = ("a gap between two rows is real only when their means differ by more than the sum of "
        "their standard deviations; with one seed on either side it is not judged (null)")
STD = "sample standard deviation (n - 1); null with one seed"
# what a seed's results.json records it trained on, kept per seed in summary.json where recorded:
# the sha256 of Table 2's proposals, and the runner's setting (--train, --test, --opts)
RECORDED = ("proposals", "setting")


def mean_std(values):
    """(mean, sample standard deviation) of a list of numbers; std is None for one value.
    A NaN among the values (a metric the evaluator could not compute) gives NaN."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std needs at least one value")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def real_gap(mean_a, std_a, mean_b, std_b):
    """True when |mean_a - mean_b| > std_a + std_b, False when not (a gap equal to the summed
    spreads is not real), None when it cannot be judged: a spread is None or a number is NaN."""
    if std_a is None or std_b is None or any(math.isnan(x) for x in (mean_a, std_a, mean_b, std_b)):
        return None
    return abs(mean_a - mean_b) > std_a + std_b


def summarize(per_seed, rows, tables, paper, seeds):
    """summary.json's content. per_seed: row -> {seed: that seed's results.json (task -> metric ->
    value, and "seconds")}; rows, tables, paper: the runner's ROWS, TABLES, PAPER; seeds: the
    SEED values asked for. Every row's per-seed metrics and seconds, their mean, spread and sum,
    the proposals and setting each seed trained with where its results record them ("proposals",
    "setting"; seeds finished before the record existed have none), and for rows
    other than (c) the gap to row (c) of the same table and whether it is real."""
    summary = {"seeds": list(seeds), "std": STD, "real_gap_rule": RULE, "tables": {}, "seconds_total": 0.0}
    for prefix, (title, task, metrics) in tables.items():
        table = {}
        for row in rows:
            runs = per_seed.get(row, {})
            if not row.startswith(prefix + "/") or not runs:
                continue
            order = [s for s in seeds if s in runs]
            values = {m: [runs[s].get(task, {}).get(m, float("nan")) for s in order] for m in metrics}
            stats = {m: mean_std(v) for m, v in values.items()}
            seconds = {str(s): float(runs[s].get("seconds", 0.0)) for s in order}
            table[row] = {
                "label": rows[row][1],
                "n": len(order),
                "per_seed": {str(s): {m: values[m][i] for m in metrics} for i, s in enumerate(order)},
                "mean": {m: stats[m][0] for m in metrics},
                "std": {m: stats[m][1] for m in metrics},
                "paper": dict(zip(metrics, paper[row])),
                "seconds": seconds,
                "seconds_total": sum(seconds.values()),
            }
            for key in RECORDED:
                recorded = {str(s): runs[s][key] for s in order if runs[s].get(key) is not None}
                if recorded:
                    table[row][key] = recorded
        ref = table.get(prefix + "/c")
        for row, entry in table.items():
            if ref is None or entry is ref:
                continue
            entry["gap_vs_c"] = {m: entry["mean"][m] - ref["mean"][m] for m in metrics}
            entry["real_gap_vs_c"] = {
                m: real_gap(entry["mean"][m], entry["std"][m], ref["mean"][m], ref["std"][m]) for m in metrics
            }
        if table:
            total = sum(e["seconds_total"] for e in table.values())
            summary["tables"][prefix] = {"title": title, "task": task, "metrics": metrics,
                                         "rows": table, "seconds_total": total}
            summary["seconds_total"] += total
    return json_safe(summary)


def json_safe(obj):
    """NaN and infinities become None, so summary.json is strict JSON."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def describe(setting):
    """A seed's setting as the runner's arguments: "--train A --test B --opts K V ..."."""
    opts = " ".join(setting["opts"]) or "(none)"
    return f"--train {setting['train']} --test {setting['test']} --opts {opts}"


def _num(x, spec=".1f"):
    return "n/a" if x is None else format(x, spec)


def markdown(summary):
    """TABLES.md's lines: per table, mean ± std (paper) per cell, ▲/▼ on real gaps to row (c)."""
    lines = [f"Each cell: mean ± sample standard deviation (n - 1) over the row's n seeds (SEED "
             f"{', '.join(map(str, summary['seeds']))}), then the paper's COCO minival number in brackets; "
             "with one seed the spread is n/a. ▲/▼: the row's mean is above/below row (c)'s by more than "
             "the sum of their standard deviations, a real gap; unmarked gaps are within the spread or, "
             "with one seed on either side, not judged. Minutes: wall time summed over the row's seeds.", ""]
    settings = sorted({describe(setting) for table in summary["tables"].values()
                       for entry in table["rows"].values() for setting in entry.get("setting", {}).values()})
    if settings:  # the data and any overrides, above the numbers they produced
        lines += ["The seeds trained with: " + "; ".join(f"`{s}`" for s in settings)
                  + " (seeds finished before the runner recorded it are not counted here).", ""]
    for prefix, table in summary["tables"].items():
        metrics = table["metrics"]
        lines += [f"## {table['title']}", "",
                  "| row | n | " + " | ".join(f"{m} (paper)" for m in metrics) + " | minutes |",
                  "|---|---|" + "---|" * (len(metrics) + 1)]
        for entry in table["rows"].values():
            cells = []
            for m in metrics:
                real = entry.get("real_gap_vs_c", {}).get(m)
                mark = "" if not real else (" ▲" if entry["gap_vs_c"][m] > 0 else " ▼")
                cells.append(f"{_num(entry['mean'][m])} ± {_num(entry['std'][m])}{mark} ({entry['paper'][m]})")
            lines.append(f"| {entry['label']} | {entry['n']} | " + " | ".join(cells)
                         + f" | {entry['seconds_total'] / 60:.1f} |")
        lines += ["", f"Wall time of the table: {table['seconds_total'] / 60:.1f} minutes.", ""]
    lines.append(f"Wall time of all tables: {summary['seconds_total'] / 60:.1f} minutes.")
    return lines
