"""The trainer of the plugin's jobs: Detectron2's DefaultTrainer with COCOEvaluator, the checked
data path, ``eval_results.json`` written by :meth:`Trainer.test`, DDP on CPU (gloo), checkpoints
that survive a kill (:class:`fpn_plugin.engine.checkpoint.AtomicCheckpointer`), and SGD or AdamW
(``SOLVER.OPTIMIZER``).
"""
import json
import logging
import os
import weakref

import torch
from detectron2.data import build_detection_test_loader, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.evaluation import COCOEvaluator
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm

from .atomic import atomic_output
from .checkpoint import AtomicCheckpointer
from ..config import check_choice
from ..data import check_has_masks, check_proposal_files, sanitize_annotations
from ..data.mapper import CheckedDatasetMapper

__all__ = ["Trainer", "EVAL_RESULTS", "OPTIMIZERS"]

logger = logging.getLogger(__name__)

#: File in OUTPUT_DIR holding the last evaluation's results (task -> metric -> value).
EVAL_RESULTS = "eval_results.json"

#: Values of SOLVER.OPTIMIZER.
OPTIMIZERS = ("SGD", "ADAMW")


class Trainer(DefaultTrainer):
    """DefaultTrainer for the plugin's configs, on GPUs or CPUs, one process or many.

    Everything is built by DefaultTrainer's public ``build_*`` methods in DefaultTrainer's order.
    The one difference is the DDP wrapper: Detectron2 pins it to the local GPU
    (``device_ids=[local_rank]``), which DDP refuses for a CPU model, so on ``MODEL.DEVICE: cpu``
    the same ``create_ddp_model`` gets ``device_ids=None`` and gradients are averaged over gloo.

    For runs that get killed: checkpoints are written atomically and ``--resume`` steps past one
    it cannot read (:class:`~fpn_plugin.engine.checkpoint.AtomicCheckpointer`), and metrics are written
    at least once per checkpoint period, so ``metrics.json`` reaches the checkpoint a resume
    starts from.
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        device_ids = None if cfg.MODEL.DEVICE == "cpu" else [comm.get_local_rank()]
        model = create_ddp_model(model, broadcast_buffers=False, device_ids=device_ids)
        loop = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = loop(model, data_loader, optimizer)  # the attribute DefaultTrainer steps
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume=True):
        """DefaultTrainer.resume_or_load, except that the iteration counter continues only when
        a checkpoint of OUTPUT_DIR was actually loaded: when every one is unreadable the run
        starts from MODEL.WEIGHTS at iteration 0 (DefaultTrainer's test, the mere presence of
        ``last_checkpoint``, would make that iteration 1)."""
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if self.checkpointer.resumed_from:
            self.start_iter = self.iter + 1  # the checkpoint holds the iteration that finished

    @classmethod
    def build_optimizer(cls, cfg, model):
        """The optimizer SOLVER.OPTIMIZER names. "SGD": Detectron2's (SGD with SOLVER.MOMENTUM).
        "ADAMW": AdamW (betas 0.9, 0.999) at SOLVER.BASE_LR with decoupled weight decay
        SOLVER.WEIGHT_DECAY. Both take Detectron2's parameter groups (WEIGHT_DECAY_NORM,
        WEIGHT_DECAY_BIAS, BIAS_LR_FACTOR) and its gradient clipping (SOLVER.CLIP_GRADIENTS)."""
        check_choice(cfg.SOLVER.OPTIMIZER, OPTIMIZERS, "SOLVER.OPTIMIZER")
        if cfg.SOLVER.OPTIMIZER == "SGD":
            return super().build_optimizer(cfg, model)
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        adamw = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)
        return adamw(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)

    def build_writers(self):
        self._writers = super().build_writers()  # kept for build_hooks
        return self._writers

    def build_hooks(self):
        """DefaultTrainer's hooks, with the metrics writers (``metrics.json``, the log,
        TensorBoard) run every min(20, CHECKPOINT_PERIOD) iterations instead of every 20, so a
        short run still logs at each checkpoint and a killed one has metrics up to its last
        checkpoint. CHECKPOINT_PERIOD >= 20 changes nothing."""
        period = min(20, self.cfg.SOLVER.CHECKPOINT_PERIOD)
        return [
            hooks.PeriodicWriter(self._writers, period=period) if isinstance(h, hooks.PeriodicWriter) else h
            for h in super().build_hooks()
        ]

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's train loader over the sanitized dataset (degenerate boxes dropped), with
        a mapper that names an unreadable image; MASK_ON on a dataset without masks stops here."""
        check_proposal_files(cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else ())
        dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        if cfg.MODEL.MASK_ON:
            check_has_masks(dicts, cfg.DATASETS.TRAIN)
        mapper = CheckedDatasetMapper(cfg, is_train=True)
        return build_detection_train_loader(cfg, dataset=sanitize_annotations(dicts), mapper=mapper)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        check_proposal_files(cfg.DATASETS.PROPOSAL_FILES_TEST if cfg.MODEL.LOAD_PROPOSALS else ())
        return build_detection_test_loader(cfg, dataset_name, mapper=CheckedDatasetMapper(cfg, is_train=False))

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """DefaultTrainer.test, then the results written to OUTPUT_DIR/eval_results.json (atomically,
        by the main process) so scripts can read them without parsing the log."""
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and results:
            path = os.path.join(cfg.OUTPUT_DIR, EVAL_RESULTS)
            with atomic_output(path) as tmp, open(tmp, "w") as f:
                json.dump(results, f, indent=2)
            logger.info("Evaluation results written to %s", path)
        return results
