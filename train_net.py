#!/usr/bin/env python3
"""Train and evaluate the paper's FPN with Detectron2's DefaultTrainer and COCOEvaluator.

    python train_net.py --config-file configs/fpn_paper.yaml
    python train_net.py --config-file configs/fpn_paper.yaml --eval-only MODEL.WEIGHTS out/model_final.pth
    python train_net.py --config-file configs/fpn_paper.yaml --resume
    python train_net.py --config-file configs/fpn_paper.yaml --num-gpus 8  (or N CPU processes)
"""
import functools
import json
import logging
import os
from unittest import mock

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.engine import defaults as d2_defaults
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import fpn_plugin
from fpn_plugin.data import check_dataset_files, check_has_masks, prepare_datasets, sanitize_annotations
from fpn_plugin.data.mapper import CheckedDatasetMapper

logger = logging.getLogger("fpn_plugin.train_net")


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        if cfg.MODEL.DEVICE != "cpu":
            super().__init__(cfg)
            return
        # Detectron2's create_ddp_model pins DDP to the local GPU (device_ids=[rank]), which
        # DDP refuses for a CPU model; on CPU the same DDP runs with device_ids=None (gloo).
        cpu_ddp = functools.partial(d2_defaults.create_ddp_model, device_ids=None)
        with mock.patch.object(d2_defaults, "create_ddp_model", cpu_ddp):
            super().__init__(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
            if cfg.MODEL.KEYPOINT_ON else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        if cfg.MODEL.MASK_ON:
            check_has_masks(dicts, cfg.DATASETS.TRAIN)
        mapper = CheckedDatasetMapper(cfg, is_train=True)
        return build_detection_train_loader(cfg, dataset=sanitize_annotations(dicts), mapper=mapper)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=CheckedDatasetMapper(cfg, is_train=False))


def setup(args):
    """Config from file and command line, checked before any work; logging and output dir."""
    cfg = get_cfg()
    fpn_plugin.add_fpn_paper_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"  # the same job runs on a machine without a GPU
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="fpn_plugin")
    if cfg.MODEL.DEVICE == "cpu":
        logger.info("No CUDA device: running on the CPU (%d threads)", torch.get_num_threads())
    return cfg


def main(args):
    cfg = setup(args)
    datasets = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    if comm.get_local_rank() == 0:
        prepare_datasets(datasets)  # embedded splits are generated once per machine
    comm.synchronize()
    proposals = cfg.DATASETS.PROPOSAL_FILES_TRAIN + cfg.DATASETS.PROPOSAL_FILES_TEST if cfg.MODEL.LOAD_PROPOSALS else ()
    check_dataset_files(datasets, proposals)

    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
        results = getattr(trainer, "_last_eval_results", None)  # set by the final EvalHook
    if comm.is_main_process() and results:
        with open(os.path.join(cfg.OUTPUT_DIR, "eval_results.json"), "w") as f:
            json.dump(results, f, indent=2)
    return results


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
