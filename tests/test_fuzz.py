"""Property tests on arbitrary inputs (hypothesis, derandomized, a few seconds each): Eq. 1 on any
box, inference on any image size, and any value of the MODEL.FPN_PAPER keys."""
import math

import pytest
import torch
from detectron2.modeling import build_model
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from fpn_plugin import NECK_REGISTRY, roi_levels
from fpn_plugin.modeling.poolers import LEVEL_ROUNDINGS

# Same examples on every run, none stored on disk; fixtures are built once per test, on purpose.
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

# ---------------------------------------------------------------- Eq. 1

f32 = dict(width=32)
#: Widths and heights: fractional, zero, negative (an inverted box), tiny, huge, float32's max.
side = st.one_of(
    st.floats(0, 2000, **f32), st.floats(-100, 0, **f32),
    st.sampled_from([0.0, 1e-30, 0.5, 111.99999, 112.0, 224.0, 448.0, 1e20, 3.4e38]),
)
corner = st.floats(-1e5, 1e5, **f32)
box_from_corner = st.builds(lambda x, y, w, h: [x, y, x + w, y + h], corner, corner, side, side)
any_box = st.lists(st.floats(**f32), min_size=4, max_size=4)  # NaN, inf, anything


@st.composite
def eq1_args(draw):
    min_level = draw(st.integers(1, 5))
    max_level = draw(st.integers(min_level, min_level + 5))
    return dict(
        canonical_level=draw(st.integers(min_level, max_level)),
        canonical_size=draw(st.floats(1.0, 2000.0)),
        min_level=min_level, max_level=max_level,
        rounding=draw(st.sampled_from(LEVEL_ROUNDINGS)),
    )


def closed_form(box, canonical_level, canonical_size, min_level, max_level, rounding):
    """The levels Eq. 1 allows for a valid box (finite, positive area), computed in float64:
    one level, or the two either side of a bin edge the box lies within 1e-3 levels of."""
    x0, y0, x1, y1 = box
    k = canonical_level + math.log2(math.sqrt((x1 - x0) * (y1 - y0)) / canonical_size)
    k += 0.5 if rounding == "round" else 0.0
    near = {math.floor(k)} if abs(k - round(k)) > 1e-3 else {round(k) - 1, round(k)}
    return {min(max(level, min_level), max_level) for level in near}


@settings(max_examples=300, **SETTINGS)
@given(boxes=st.lists(st.one_of(box_from_corner, any_box), min_size=0, max_size=8), args=eq1_args())
def test_eq1_level_in_range_and_equal_to_the_closed_form(boxes, args):
    t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    levels = roi_levels(t, **args)
    assert levels.dtype == torch.int64 and levels.shape == (len(boxes),)
    assert ((levels >= args["min_level"]) & (levels <= args["max_level"])).all()
    for box, level in zip(t.double().tolist(), levels.tolist()):
        w, h = box[2] - box[0], box[3] - box[1]
        if all(map(math.isfinite, box)) and w > 0 and h > 0 and math.isfinite(w * h) and w * h > 0:
            assert level in closed_form(box, **args), (box, args)


# ---------------------------------------------------------------- inference on any image size

PRIMES = [2, 3, 5, 7, 13, 31, 97, 127, 331, 509, 1021, 1327]
image_side = st.one_of(st.integers(1, 1333), st.sampled_from(PRIMES))


@pytest.fixture
def detector(make_cfg):
    """The small model, untrained, built once for all examples of a test."""
    return build_model(make_cfg("Base-FPN-Paper.yaml", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0)).eval()


@settings(max_examples=8, **SETTINGS)
@example(h=1, w=1, seed=0)
@example(h=1333, w=1333, seed=1)
@example(h=1, w=1333, seed=2)
@example(h=1327, w=3, seed=3)
@given(h=image_side, w=image_side, seed=st.integers(0, 2**16))
def test_inference_on_any_image_size_gives_boxes_inside_it(detector, h, w, seed):
    assume(h * w <= 1333 * 400 or (h, w) == (1333, 1333))  # one full-size image; the rest cheaper
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        instances = detector([{"image": image, "height": h, "width": w}])[0]["instances"]
    assert len(instances) > 0  # SCORE_THRESH_TEST 0: an untrained model still gives boxes
    boxes = instances.pred_boxes.tensor
    assert torch.isfinite(boxes).all() and torch.isfinite(instances.scores).all()
    x0, y0, x1, y1 = boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= w).all() and (y1 <= h).all()
    assert (x0 <= x1).all() and (y0 <= y1).all()


# ---------------------------------------------------------------- any value of MODEL.FPN_PAPER.*

anything = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6),
    st.sampled_from(["", "0", "1", "None", "True", "nan", "-1", "1e400", "(1, 2)", "[]", "{}"]),
)
#: Each key: values the README documents as valid, or anything at all, except that positive widths
#: stay small: a width of 10**6 is valid and would only exhaust memory.
VALUES = {
    "NECK": st.one_of(st.sampled_from(sorted(NECK_REGISTRY._obj_map)), anything),
    "TOP_DOWN_CHANNELS": st.one_of(st.none(), st.integers(1, 16), st.integers(max_value=0), anything.filter(
        lambda v: not isinstance(v, int) or v <= 16)),
    "OUT_CHANNELS": st.one_of(st.none(), st.integers(1, 16), st.integers(max_value=0), anything.filter(
        lambda v: not isinstance(v, int) or v <= 16)),
    "CANONICAL_LEVEL": st.one_of(st.integers(1, 7), anything),
    "CANONICAL_SIZE": st.one_of(st.integers(1, 1000), st.floats(0.5, 1000), anything),
    "LEVEL_ROUNDING": st.one_of(st.sampled_from(LEVEL_ROUNDINGS), anything),
    "FAST.AUTOCAST": st.one_of(st.sampled_from(["", "bf16", "fp16"]), anything),
    "FAST.CHANNELS_LAST": st.one_of(st.booleans(), anything),
}


def set_key(cfg, key, value):
    node = cfg.MODEL.FPN_PAPER
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value


@settings(max_examples=40, **SETTINGS)
@example(values={"CANONICAL_SIZE": float("nan")}, via_command_line=False)  # found by this test: an
@example(values={"CANONICAL_SIZE": 10**400}, via_command_line=False)       # AssertionError, an OverflowError
@given(
    values=st.dictionaries(st.sampled_from(sorted(VALUES)), st.just(None), min_size=1, max_size=3).flatmap(
        lambda keys: st.fixed_dictionaries({k: VALUES[k] for k in keys})),
    via_command_line=st.booleans(),
)
def test_any_fpn_paper_value_builds_or_names_the_key(make_cfg, values, via_command_line):
    cfg = make_cfg("Base-FPN-Paper.yaml", "MODEL.FPN.OUT_CHANNELS", 16, "MODEL.ROI_BOX_HEAD.FC_DIM", 16)
    names = [f"MODEL.FPN_PAPER.{k}" for k in values]
    try:
        if via_command_line:  # as train_net.py's trailing "KEY VALUE" pairs reach the config
            cfg.merge_from_list([x for k, v in zip(names, values.values()) for x in (k, str(v))])
        else:  # as Python code may set them
            for k, v in values.items():
                set_key(cfg, k, v)
        build_model(cfg)
    except ValueError as e:
        assert any(name in str(e) for name in names), (values, str(e))


@pytest.mark.parametrize("key, value", [
    ("CANONICAL_SIZE", float("nan")), ("CANONICAL_SIZE", float("inf")), ("CANONICAL_SIZE", 10**400),
    ("FAST.CHANNELS_LAST", "no"), ("FAST.CHANNELS_LAST", None),
])
def test_values_found_by_fuzzing_are_refused(make_cfg, key, value):
    cfg = make_cfg("Base-FPN-Paper.yaml", "MODEL.FPN.OUT_CHANNELS", 16, "MODEL.ROI_BOX_HEAD.FC_DIM", 16)
    set_key(cfg, key, value)
    with pytest.raises(ValueError, match=f"MODEL.FPN_PAPER.{key}"):
        build_model(cfg)
