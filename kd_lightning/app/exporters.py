"""Writing a network to a deployable file (ONNX, TorchScript) and reading it back to compare outputs."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .. import io

SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


def export_onnx(net: torch.nn.Module, x: torch.Tensor, path: Path, input_name: str = "input",
                output_name: str = "logits", dynamic: Sequence[int] = (0,), dynamo: bool = False) -> np.ndarray:
    """Write ``net`` as one ONNX file (the axes ``dynamic`` of input and output may vary) and run ``x``
    through it. ``dynamo``: trace with ``torch.export`` (what transformers' causal LMs need; the weights are
    kept inside the file, so that it is written and renamed as one)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError:
        raise RuntimeError("ONNX export needs onnx and onnxruntime: pip install 'kd-lightning[export]'") from None
    names = {0: "batch", 1: "sequence"}
    with io.atomic_path(path) as tmp:
        if dynamo:
            shapes = {input_name: {a: torch.export.Dim(names.get(a, f"dim{a}")) for a in dynamic}}
            torch.onnx.export(net, (x,), str(tmp), input_names=[input_name], output_names=[output_name],
                              dynamic_shapes=shapes, dynamo=True, external_data=False, verbose=False)
        else:
            axes = {name: {a: names.get(a, f"dim{a}") for a in dynamic} for name in (input_name, output_name)}
            torch.onnx.export(net, (x,), str(tmp), input_names=[input_name], output_names=[output_name],
                              dynamic_axes=axes, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {input_name: x.numpy()})[0]


def export_torchscript(net: torch.nn.Module, x: torch.Tensor, path: Path) -> np.ndarray:
    scripted = torch.jit.trace(net, x)
    with io.atomic_path(path) as tmp:
        scripted.save(str(tmp))
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        return loaded(x).numpy()


def check_match(got: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> float:
    """The largest absolute difference; raises when the exported model's outputs differ from the network's."""
    max_err = float(np.abs(got - expected).max())
    if not np.allclose(got, expected, atol=atol, rtol=rtol):
        raise RuntimeError(f"the exported model's outputs differ from the checkpoint's (max abs error {max_err:.3g})")
    return max_err
