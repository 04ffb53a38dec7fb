"""``kd-export``: write the deployable student alone (ONNX or TorchScript) and check its outputs."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from .. import io
from .confdir import CONFIG_DIR, set_run_id
from .quiet import quiet_known_noise

log = logging.getLogger(__name__)
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


def _example_batch(cfg: DictConfig) -> torch.Tensor:
    from .build import build_datamodule

    dm = build_datamodule(cfg.data)
    dm.setup("test")
    return next(iter(dm.test_dataloader()))[0][:16].float()


def export_onnx(net: torch.nn.Module, x: torch.Tensor, path: Path) -> np.ndarray:
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError:
        raise RuntimeError("ONNX export needs onnx and onnxruntime: pip install 'kd-lightning[export]'") from None
    with io.atomic_path(path) as tmp:
        torch.onnx.export(net, (x,), str(tmp), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


def export_torchscript(net: torch.nn.Module, x: torch.Tensor, path: Path) -> np.ndarray:
    scripted = torch.jit.trace(net, x)
    with io.atomic_path(path) as tmp:
        scripted.save(str(tmp))
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        return loaded(x).numpy()


def export(cfg: DictConfig) -> Dict[str, Any]:
    from .checkpoint import load_student
    from .errors import ConfigError

    fmt = str(cfg.format).lower()
    if fmt not in SUFFIX:
        raise ConfigError(f"format={cfg.format!r} is not supported; use format=onnx or format=torchscript")
    net, cfg = load_student(cfg)
    net.eval()
    x = _example_batch(cfg)
    out = Path(cfg.output) if cfg.get("output") else Path(str(cfg.ckpt_path)).with_suffix(SUFFIX[fmt])
    with torch.no_grad():
        expected = net(x).numpy()
    got = export_onnx(net, x, out) if fmt == "onnx" else export_torchscript(net, x, out)
    max_err = float(np.abs(got - expected).max())
    if not np.allclose(got, expected, atol=cfg.atol, rtol=cfg.rtol):
        raise RuntimeError(f"the exported model's outputs differ from the checkpoint's (max abs error {max_err:.3g})")
    print(f"exported {out} ({fmt}); outputs match the checkpoint on {len(x)} test samples (max abs error {max_err:.2e})")
    return {"path": str(out), "format": fmt, "max_abs_error": max_err}


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
def _main(cfg: DictConfig) -> None:
    from .errors import ConfigError

    try:
        export(cfg)
    except (ConfigError, RuntimeError) as err:
        raise SystemExit(f"kd-export: error: {err}") from None


def main() -> None:
    import sys

    from .confdir import unknown_group_choice

    bad_choice = unknown_group_choice(sys.argv[1:])
    if bad_choice:
        raise SystemExit(f"kd-export: error: {bad_choice}")
    quiet_known_noise()
    set_run_id()
    _main()


if __name__ == "__main__":
    main()
