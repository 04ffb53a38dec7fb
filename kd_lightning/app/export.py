"""``kd-export``: write the deployable student alone (ONNX, TorchScript or, for a language model, a Hugging
Face directory) and check its outputs."""
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
    if fmt not in SUFFIX and fmt != "hf":
        raise ConfigError(f"format={cfg.format!r} is not supported; use format=onnx or format=torchscript")
    net, cfg = load_student(cfg)
    net.eval()
    if fmt == "hf":
        return export_hf(net, cfg)
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


def export_hf(net: torch.nn.Module, cfg: DictConfig) -> Dict[str, Any]:
    """``format=hf``: a language-model student as a Hugging Face directory with its tokenizer (a LoRA student:
    its adapter, or with ``merged=true`` the model with the adapters merged in), read back and checked
    against the checkpoint's logits on a validation batch."""
    import os

    from .build import build_datamodule
    from .errors import ConfigError
    from .lm import save_student_hf

    merged = bool(cfg.get("merged", False))
    datamodule = build_datamodule(cfg.data)
    datamodule.setup("fit")  # the data's tokenizer (trained once and cached, or given)
    tokenizer = getattr(datamodule, "tokenizer", None)
    if tokenizer is None or not hasattr(net, "save_pretrained"):
        raise ConfigError(f"format=hf writes a Hugging Face language model, but this checkpoint's student is a "
                          f"{type(net).__name__} on {type(datamodule).__name__}; use format=onnx or format=torchscript")
    ckpt = Path(str(cfg.ckpt_path))
    default = ckpt.with_name(ckpt.stem + ("_hf_merged" if merged else "_hf_export"))
    out = Path(cfg.output) if cfg.get("output") else default
    if out.exists():
        raise ConfigError(f"output={str(out)!r} already exists (kd-train writes student_hf/ itself); pass "
                          "output=<a new directory>")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        save_student_hf(net, tokenizer, tmp, merged=merged)
    except TypeError as err:  # merged=true for a student without adapters
        raise ConfigError(f"merged=true: {err}") from None
    os.replace(tmp, out)  # the directory appears complete or not at all
    ids = next(iter(datamodule.val_dataloader()))["input_ids"][:4]
    loaded = read_hf(out, net)
    with torch.no_grad():
        expected, got = net(input_ids=ids).logits, loaded(input_ids=ids).logits
    max_err = float((got - expected).abs().max())
    if not torch.allclose(got, expected, atol=cfg.atol, rtol=cfg.rtol):
        raise RuntimeError(f"the exported model's logits differ from the checkpoint's (max abs error {max_err:.3g})")
    what = "merged model" if merged else "adapter" if (out / "adapter_config.json").is_file() else "model"
    print(f"exported {out} (Hugging Face {what}); logits match the checkpoint on {len(ids)} validation sequences "
          f"(max abs error {max_err:.2e})")
    return {"path": str(out), "format": "hf", "merged": merged, "max_abs_error": max_err}


def read_hf(path: Path, net: torch.nn.Module) -> torch.nn.Module:
    """The directory :func:`export_hf` wrote, loaded as a user would: an adapter onto ``net``'s own base
    (a copy, adapters removed), anything else with ``AutoModelForCausalLM``."""
    import copy

    if (path / "adapter_config.json").is_file():
        import peft

        return peft.PeftModel.from_pretrained(copy.deepcopy(net).unload(), str(path)).eval()
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(str(path)).eval()


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
