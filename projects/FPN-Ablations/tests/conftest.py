"""The ablation project's tests use the suite's fixtures (tests/helpers.py)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "tests"))
from helpers import datasets_root, make_cfg, seed_everything  # noqa: E402, F401  (fixtures)
