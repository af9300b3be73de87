"""The suite's fixtures live in helpers.py, shared with the ablation project's tests."""
from helpers import datasets_root, make_cfg, seed_everything  # noqa: F401  (fixtures)
