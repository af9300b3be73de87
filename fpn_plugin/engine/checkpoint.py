"""Checkpoints that survive a killed run: Detectron2's ``DetectionCheckpointer`` with atomic
writes and a resume that steps past a checkpoint it cannot read.

* :meth:`AtomicCheckpointer.save` writes ``<name>.pth`` through :func:`~fpn_plugin.engine.atomic.atomic_output`
  (a temporary file beside it, fsynced and renamed); ``last_checkpoint`` is replaced the same way
  afterwards. A kill at any moment leaves under a final name either the previous file or the
  complete new one (at worst a hidden ``.<name>.<pid>.tmp.pth`` that nothing reads).
* :meth:`AtomicCheckpointer.resume_or_load` with ``resume=True`` loads the file
  ``last_checkpoint`` names; if that file cannot be read (missing, truncated, zero bytes, not a
  checkpoint) it logs a warning naming it and tries the other ``model_*.pth`` of the folder,
  newest first. If none is readable it says so and loads ``path`` (``MODEL.WEIGHTS``) instead.
* A file that cannot be read raises :class:`UnreadableCheckpointError` naming it, never a bare
  unpickling traceback.

Only the main process writes (Detectron2's ``save_to_disk``); every process reads.
"""
import glob
import logging
import os
import re
from collections.abc import Mapping
from urllib.parse import urlparse

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .atomic import atomic_output

__all__ = ["AtomicCheckpointer", "UnreadableCheckpointError"]

logger = logging.getLogger(__name__)

#: Name of the file holding the basename of the newest checkpoint (fvcore's convention).
LAST_CHECKPOINT = "last_checkpoint"


class UnreadableCheckpointError(RuntimeError):
    """A checkpoint file that does not exist or cannot be loaded; ``path`` names it."""

    def __init__(self, path, reason):
        self.path = path
        super().__init__(f"cannot read checkpoint {path}: {reason}")


def _mtime(path):
    try:
        return os.path.getmtime(path)
    except OSError:  # removed since it was listed
        return 0.0


def _iteration_in_name(path):
    match = re.search(r"_(\d+)\.pth$", os.path.basename(path))
    return int(match.group(1)) if match else -1


class AtomicCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose saves are atomic and whose resume survives a bad file.

    Drop-in: same constructor, same files (``model_0000099.pth``, ``model_final.pth``,
    ``last_checkpoint``), loadable by the stock checkpointer. After :meth:`resume_or_load`,
    :attr:`resumed_from` is the checkpoint of the output folder that was loaded, or None when
    the run starts from ``path`` (``MODEL.WEIGHTS``) or from scratch.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.resumed_from = None

    def save(self, name, **kwargs):
        """Write ``<save_dir>/<name>.pth`` atomically, then point ``last_checkpoint`` at it."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        logger.info("Saving checkpoint to %s", path)
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            torch.save(data, f)  # looked up at call time, so a test can make it fail part-way
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        """Replace ``last_checkpoint`` atomically with the given basename."""
        path = os.path.join(self.save_dir, LAST_CHECKPOINT)
        with atomic_output(path) as tmp, open(tmp, "w") as f:
            f.write(last_filename_basename)

    def load(self, path, *args, **kwargs):
        """``DetectionCheckpointer.load``; raises :class:`UnreadableCheckpointError` naming
        ``path`` if it is a local file that does not exist or cannot be read. A file that
        cannot be read leaves the model and the checkpointables untouched."""
        if path and not urlparse(path).scheme:
            local = urlparse(path)._replace(query="").geturl()
            if not os.path.isfile(local):
                raise UnreadableCheckpointError(path, "no such file")
        try:
            return super().load(path, *args, **kwargs)
        finally:
            # DetectionCheckpointer resets this only when loading succeeded; without the reset
            # every later load (the next resume candidate) would fail its assertion.
            self._parsed_url_during_load = None

    def _load_file(self, filename):
        # The file-format hook of fvcore's Checkpointer (DetectionCheckpointer overrides it too):
        # any failure to read becomes one error naming the file.
        if os.path.isfile(filename) and os.path.getsize(filename) == 0:
            raise UnreadableCheckpointError(filename, "empty file (0 bytes)")
        try:
            loaded = super()._load_file(filename)
        except Exception as e:
            reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            raise UnreadableCheckpointError(filename, reason) from e
        if not isinstance(loaded, Mapping) or not isinstance(loaded.get("model"), Mapping):
            raise UnreadableCheckpointError(filename, "not a checkpoint (no state dict under 'model')")
        return loaded

    def resume_candidates(self):
        """Files to resume from, in order: the one ``last_checkpoint`` names, then the other
        ``model_*.pth`` of ``save_dir``, newest first (modification time, then the iteration in
        the name: ``model_final.pth`` has none)."""
        named = self.get_checkpoint_file() if self.has_checkpoint() else ""
        if named and not os.path.basename(named):  # an empty last_checkpoint (a stock, in-place write)
            logger.warning("%s names no checkpoint", os.path.join(self.save_dir, LAST_CHECKPOINT))
            named = ""
        others = [p for p in glob.glob(os.path.join(glob.escape(self.save_dir), "model_*.pth")) if p != named]
        others.sort(key=lambda p: (_mtime(p), _iteration_in_name(p)), reverse=True)
        return ([named] if named else []) + others

    def resume_or_load(self, path, *, resume=True):
        """With ``resume`` and a ``last_checkpoint`` in ``save_dir``: load the first readable
        file of :meth:`resume_candidates` with all checkpointables, warning about each file
        that cannot be read. Otherwise, or if none is readable, load only the model from
        ``path`` (``MODEL.WEIGHTS``; "" starts from scratch).

        Raises :class:`UnreadableCheckpointError` if ``path`` itself is needed and unreadable.
        """
        self.resumed_from = None
        if resume and self.has_checkpoint():
            for candidate in self.resume_candidates():
                try:
                    ret = self.load(candidate)
                except UnreadableCheckpointError as e:
                    logger.warning("%s; looking for an older checkpoint", e)
                    continue
                self.resumed_from = candidate
                return ret
            logger.warning(
                "No readable checkpoint in %s to resume from; starting from MODEL.WEIGHTS (%s)",
                self.save_dir, path or "none: from scratch",
            )
        return self.load(path, checkpointables=[])
