"""kd_lightning/app/build.py: the objects the app builds from the composed config."""
import inspect

import torch

from helpers import small_nets
from kd_lightning import DistillationModule
from kd_lightning.app.build import build_module_factory
from kd_lightning.losses import KD


def test_module_node_sets_every_constructor_argument(compose):
    """conf/module maps onto DistillationModule: each argument a user may want is a key, and it arrives."""
    built_by_app = {"student", "teacher", "loss", "batch_transform", "teacher_architecture"}
    cfg = compose("module.compile=true", "module.channels_last=true", "module.save_teacher=true",
                  "module.ensemble_mode=logits", "module.check_finite=false", "module.input_key=signal")
    params = set(inspect.signature(DistillationModule.__init__).parameters) - {"self"}
    assert params - built_by_app == set(cfg.module) - {"_target_", "_partial_"}
    module = build_module_factory(cfg.module)(student=small_nets()[1], teacher=small_nets()[0], loss=KD())
    assert module.hparams.compile and module.hparams.channels_last and module.save_teacher
    assert module.hparams.ensemble_mode == "logits" and not module.hparams.check_finite
    assert module.hparams.input_key == "signal"
    assert module.optimizer_factory.func is torch.optim.Adam and module.optimizer_factory.keywords["lr"] == 0.01


def test_lm_module_node_sets_every_constructor_argument(compose):
    """conf/module/lm.yaml maps onto CausalLMDistillationModule in the same way."""
    from kd_lightning import CausalLMDistillationModule

    built_by_app = {"student", "teacher", "loss", "tokenizer", "teacher_tokenizer", "student_tokenizer",
                    "on_policy", "teacher_outputs"}
    cfg = compose("experiment=lm_pydoc", "module.fused_head=true", "module.vocab_alignment=truncate")
    params = set(inspect.signature(CausalLMDistillationModule.__init__).parameters) - {"self"}
    assert params - built_by_app == set(cfg.module) - {"_target_", "_partial_"}
    assert cfg.module.fused_head and cfg.module.vocab_alignment == "truncate"
