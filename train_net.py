#!/usr/bin/env python3
"""Train and evaluate the paper's FPN with Detectron2's trainer and COCOEvaluator.

    python train_net.py --config-file configs/fpn_paper.yaml
    python train_net.py --config-file configs/fpn_paper.yaml --eval-only MODEL.WEIGHTS out/model_final.pth
    python train_net.py --config-file configs/fpn_paper.yaml --resume
    python train_net.py --config-file configs/fpn_paper.yaml --num-gpus 8  (or N CPU processes)

Checkpoints are written atomically; --resume steps past one it cannot read (README, "When a run
is interrupted"). A MODEL.WEIGHTS file that cannot be read stops the job with one line naming it.
"""
import sys

from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from fpn_plugin.engine.checkpoint import AtomicCheckpointer, UnreadableCheckpointError
from fpn_plugin.config import load_config
from fpn_plugin.engine import Trainer


def setup(args):
    """Config from file and command line, checked before any work; logging and output dir."""
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="fpn_plugin")
    return cfg


def load_or_exit(resume_or_load, *args, **kwargs):
    """Load weights or resume; a checkpoint that cannot be read ends the job with one line naming it."""
    try:
        resume_or_load(*args, **kwargs)
    except UnreadableCheckpointError as e:
        sys.exit(f"train_net.py: {e}")


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        load_or_exit(checkpointer.resume_or_load, cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    load_or_exit(trainer.resume_or_load, resume=args.resume)
    return trainer.train()


def invoke_main():
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
