#!/usr/bin/env python3
"""How a registered dataset's ground-truth boxes fall on the pyramid levels under Eq. 1 with the
config's k0, canonical size and rounding (boxes measured at the model's test-time input scale).

    python tools/level_report.py --config-file configs/fpn_paper.yaml --dataset fpn_shapes_val \
        --output levels.png
"""
import argparse
import sys

from fpn_plugin.checked_io import CliError, atomic_output
from fpn_plugin.config import load_config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--dataset", required=True, help="a name registered in DatasetCatalog")
    parser.add_argument("--output", required=True, help="the PNG histogram to write")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    args = parser.parse_args(argv)
    try:
        from detectron2.data import DatasetCatalog

        import fpn_plugin  # noqa: F401  (registers the embedded datasets)
        from fpn_plugin.pyramid_fit import format_level_table, gt_box_sizes, level_counts, plot_level_histogram

        cfg = load_config(args.config_file, args.opts)
        if args.dataset not in DatasetCatalog:
            raise CliError(f"dataset {args.dataset!r} is not registered; registered: {', '.join(DatasetCatalog.list())}")
        try:
            dicts = DatasetCatalog.get(args.dataset)
        except Exception as e:  # noqa: BLE001 - the loader's own error, with its file name
            raise CliError(f"cannot load dataset {args.dataset!r}: {e}") from e
        levels = sorted(int(f[1:]) for f in cfg.MODEL.ROI_HEADS.IN_FEATURES if f[1:].isdigit())
        if not levels:
            raise CliError(f"MODEL.ROI_HEADS.IN_FEATURES={cfg.MODEL.ROI_HEADS.IN_FEATURES} names no pyramid level")
        rule = dict(canonical_level=cfg.MODEL.FPN_PAPER.CANONICAL_LEVEL, canonical_size=cfg.MODEL.FPN_PAPER.CANONICAL_SIZE,
                    min_level=levels[0], max_level=levels[-1], rounding=cfg.MODEL.FPN_PAPER.LEVEL_ROUNDING)
        sizes = gt_box_sizes(dicts, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        counts = level_counts(sizes, **rule)
        with atomic_output(args.output) as tmp:
            plot_level_histogram(sizes, tmp, **rule, title=f"{args.dataset}: {len(sizes)} boxes on the pyramid")
    except (CliError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_level_table(counts, f"{args.dataset}: {len(sizes)} ground-truth boxes, Eq. 1 with "
                             f"k0={rule['canonical_level']}, canonical {rule['canonical_size']}, {rule['rounding']}"))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
