"""The magnitude study's pieces: class-mixed batches, BatchNorm modes, overflow counted."""

from __future__ import annotations

import numpy as np
import torch

from mergelab.analysis import scale_state_dict
from mergelab.data import load_dataset
from mergelab.models import build_model
from mergelab.results import correct_examples
from mergelab.studies.magnitude import batch_slices, bn_adjusted, mixed_order


def test_batches_hold_several_classes() -> None:
    # mnist5k's test split comes back sorted by class: consecutive batches of it would each
    # hold one class (the paper's Fig. 4 scatters mixed batches).
    targets = load_dataset("mnist5k").targets("test")
    sorted_batches = [len(set(targets[s])) for s in batch_slices(len(targets), 50)]
    assert min(sorted_batches) == 1
    order = mixed_order(len(targets), "mnist5k/test")
    assert sorted(order.tolist()) == list(range(len(targets)))
    mixed = [len(set(targets[order][s])) for s in batch_slices(len(targets), 50)]
    assert min(mixed) >= 6 and len(mixed) == 15
    np.testing.assert_array_equal(order, mixed_order(len(targets), "mnist5k/test"))


def test_batch_slices_drop_a_partial_batch() -> None:
    assert [(s.start, s.stop) for s in batch_slices(7, 3)] == [(0, 3), (3, 6)]


def test_running_c2_scales_running_var_by_c_squared() -> None:
    model = build_model("resnet8", 10, in_chans=1, img_size=8)
    sd = model.state_dict()
    scaled = bn_adjusted(scale_state_dict(sd, 10.0), 10.0, "running_c2")
    key = next(k for k in sd if k.endswith("running_var"))
    torch.testing.assert_close(scaled[key], sd[key] * 100.0)
    mean_key = key.replace("running_var", "running_mean")
    torch.testing.assert_close(scaled[mean_key], sd[mean_key] * 10.0)
    assert bn_adjusted(sd, 10.0, "running") is sd and bn_adjusted(sd, 1.0, "running_c2") is sd


def test_overflowed_logits_are_wrong_not_class_zero() -> None:
    logits = np.array([[np.nan, 1.0], [np.inf, 0.0], [0.0, 2.0], [3.0, 1.0]], dtype=np.float32)
    targets = np.array([0, 0, 1, 0])
    assert correct_examples(logits, targets).tolist() == [0, 0, 1, 1]
