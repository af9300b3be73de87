"""The project's one way to write a file: under a temporary name beside it, renamed into place only
when complete, so a reader (or a resumed run) sees the old file or the whole new one, never part."""
import contextlib
import os

__all__ = ["atomic_output"]


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path beside ``path`` (same folder and extension, so writers that infer a
    format from it still do); when the block succeeds, fsync it and rename it to ``path``.

    If the block raises, the temporary file is removed, ``path`` is untouched and the exception
    propagates. A folder that cannot be written raises OSError naming ``path`` before the block
    runs. The temporary name starts with a dot (``.model_0000099.<pid>.tmp.pth``), so globs such
    as ``model_*.pth`` never see a partial file.
    """
    folder, name = os.path.split(os.path.abspath(path))
    root, ext = os.path.splitext(name)
    tmp = os.path.join(folder, f".{root}.{os.getpid()}.tmp{ext}")
    try:
        os.makedirs(folder, exist_ok=True)
        open(tmp, "wb").close()
    except OSError as e:
        raise OSError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    with contextlib.suppress(OSError):  # make the rename durable (POSIX; a no-op elsewhere)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
