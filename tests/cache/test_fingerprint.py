"""kd_lightning/cache/fingerprint.py: the cache key changes with the teacher weights, the data, the transform and
the storage options, and only with them."""
from __future__ import annotations


import torch
from torch.utils.data import TensorDataset

from kd_lightning.cache import outputs_key

from .helpers import make_data, make_teacher


def test_outputs_key_tracks_teacher_weights_data_transform_and_options():
    x, y = make_data()
    ds = TensorDataset(x, y)
    t = make_teacher()
    base = outputs_key(t, ds, {"a": 1})
    other_teacher = make_teacher()
    with torch.no_grad():
        other_teacher[0].weight[0, 0] += 1e-3
    assert outputs_key(other_teacher, ds, {"a": 1}) != base
    assert outputs_key(t, TensorDataset(x + 1e-3, y), {"a": 1}) != base
    assert outputs_key(t, ds, {"a": 2}) != base
    assert outputs_key(t, ds, {"a": 1}, transform="Normalize(mean=0.5)") != base
    assert outputs_key(t, ds, {"a": 1}, fp16=True) != base
    assert outputs_key(t, ds, {"a": 1}, top_k=3) != base
    assert outputs_key(make_teacher(), ds, {"a": 1}) == base  # same weights, same key
