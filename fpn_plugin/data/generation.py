"""Writing the embedded splits to disk: once, atomically, and again only when their spec changed.

Generation writes into a temporary folder beside the cache and renames it into place only when
every image and the json are written: a folder under its final name is always complete, and the
leftovers of an interrupted run are removed by the next one. The json records the spec it was
drawn from, so a split whose entry in :data:`~fpn_plugin.data.shapes.SPLITS` changed is drawn
again instead of being used under its old content.
"""
import contextlib
import itertools
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor

from . import shapes
from .shapes import CATEGORIES, SPLITS, ShapesSpec

__all__ = ["generate_shapes", "ensure_shapes"]

logger = logging.getLogger(__name__)

ANNOTATIONS = "annotations.json"
DESCRIPTION = "fpn_plugin synthetic shapes"  # the json's info.description, followed by the spec


def _write_image(spec: ShapesSpec, index: int, images_dir: str):
    """Draw image ``index`` of ``spec`` into ``images_dir``; its COCO image dict and annotations."""
    image, annos = shapes.draw_image(spec, index)
    file_name = f"{index:06d}.jpg"
    image.save(os.path.join(images_dir, file_name), quality=92)
    return {"id": index + 1, "file_name": file_name, "width": image.width, "height": image.height}, annos


def _generation_workers(num_images: int) -> int:
    # Each image has its own seed, so processes draw the same bytes in any order. Below about a
    # hundred images a pool costs more to start than it saves.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, 8, num_images // 50))  # the cores this process may run on, not the host's


def generate_shapes(spec: ShapesSpec, out_dir: str) -> str:
    """Write ``spec``'s images and ``annotations.json`` into ``out_dir`` (which is replaced
    atomically at the end); returns the json path. Large splits are drawn by one process per
    core (at most 8); the output is byte-identical to a single process's. Logs progress with an ETA."""
    parent, name = os.path.split(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    _remove_stale(parent, name)
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "images"))
    images, annotations = [], []
    start, step = time.perf_counter(), max(1, spec.num_images // 10)
    workers = _generation_workers(spec.num_images)
    logger.info("Generating %d images of %s into %s (%d process%s) ...",
                spec.num_images, name, out_dir, workers, "es" if workers > 1 else "")
    args = (itertools.repeat(spec), range(spec.num_images), itertools.repeat(os.path.join(tmp, "images")))
    with contextlib.ExitStack() as stack:
        if workers > 1:
            # fork, as Detectron2's data loader workers start: nothing to re-import
            method = "fork" if "fork" in mp.get_all_start_methods() else None
            pool = ProcessPoolExecutor(workers, mp_context=mp.get_context(method))
            # On the way out, also by an error or Ctrl-C, the images not yet started are dropped.
            stack.callback(pool.shutdown, cancel_futures=True)
            drawn = pool.map(_write_image, *args, chunksize=8)
        else:
            drawn = map(_write_image, *args)
        for i, (image, annos) in enumerate(drawn):  # in image order, whichever process drew it
            images.append(image)
            for a in annos:
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, **a})
            if (i + 1) % step == 0 or i + 1 == spec.num_images:
                spent = time.perf_counter() - start
                eta = spent / (i + 1) * (spec.num_images - i - 1)
                logger.info("  %s: %d/%d images, ETA %.0f s", name, i + 1, spec.num_images, eta)
    coco = {
        "info": {"description": _description(spec)},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": c} for i, c in enumerate(CATEGORIES)],
    }
    with open(os.path.join(tmp, ANNOTATIONS), "w") as f:
        json.dump(coco, f)
    if os.path.isdir(out_dir) and not os.path.isfile(os.path.join(out_dir, ANNOTATIONS)):
        shutil.rmtree(out_dir)  # a folder without its json was not written by a finished run
    try:
        os.replace(tmp, out_dir)  # atomic: the folder appears complete or not at all
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same split first
        if not os.path.isfile(os.path.join(out_dir, ANNOTATIONS)):
            raise
    logger.info("Wrote %s: %d images, %d objects", out_dir, len(images), len(annotations))
    return os.path.join(out_dir, ANNOTATIONS)


def _remove_stale(parent: str, name: str):
    """Remove temporary folders of ``name`` left by generator processes that no longer run."""
    prefix = f".{name}.tmp-"
    for entry in os.listdir(parent):
        if not entry.startswith(prefix):
            continue
        pid = entry[len(prefix):]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        logger.warning("Removing the leftovers of an interrupted generation: %s", entry)
        shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _description(spec: ShapesSpec) -> str:
    return f"{DESCRIPTION}, {spec}"


def _drawn_from(json_file: str):
    """The description a generated split records in its json, or None where the file cannot be
    read (the loader then reports it) or was not written by the generator."""
    try:
        with open(json_file) as f:
            description = json.load(f).get("info", {}).get("description")
    except (OSError, ValueError, AttributeError):
        return None
    return description if isinstance(description, str) and description.startswith(DESCRIPTION) else None


def ensure_shapes(name: str, root: str) -> str:
    """The json path of split ``name`` under ``root``, generating the split on first use, and
    again when the folder there was drawn from another spec of the split (a changed
    :data:`SPLITS` entry): same name, other data, is never used silently."""
    spec = SPLITS[name]
    out_dir = os.path.join(root, name)
    json_file = os.path.join(out_dir, ANNOTATIONS)
    if os.path.isfile(json_file):
        drawn = _drawn_from(json_file)
        if drawn is not None and drawn != _description(spec):
            logger.warning("%s was drawn as '%s'; drawing it again as '%s'", out_dir, drawn, _description(spec))
            try:  # under a leftover name, which the generation below removes
                os.replace(out_dir, os.path.join(root, f".{name}.tmp-stale-{os.getpid()}"))
            except FileNotFoundError:
                pass  # another process moved it first
    if not os.path.isfile(json_file):
        generate_shapes(spec, out_dir)
    return json_file
