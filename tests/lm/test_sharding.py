"""kd_lightning/lm/sharding.py and conf/trainer/fsdp.yaml: which modules FSDP makes its own units (the decoder
layers of the student and of the frozen teacher), and that the strategy is for GPUs only."""
from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch.distributed.fsdp.wrap import CustomPolicy

pytest.importorskip("transformers")

from kd_lightning import CausalLMDistillationModule  # noqa: E402
from kd_lightning.lm.sharding import DECODER_LAYERS, LayerClasses, decoder_layer_policy  # noqa: E402
from kd_lightning.models.lm import build_causal_lm  # noqa: E402


def tiny(arch: str, layers: int):
    return build_causal_lm(arch, vocab_size=32, hidden_size=16, num_layers=layers, num_heads=2, intermediate_size=32)


def test_the_policy_picks_the_decoder_layers_of_student_and_teacher():
    module = CausalLMDistillationModule(student=tiny("gpt2", 2), teacher=tiny("llama", 3))
    picked = [name for name, m in module.named_modules() if LayerClasses()(m)]
    assert picked == ["student.transformer.h.0", "student.transformer.h.1", "teacher.net.model.layers.0",
                      "teacher.net.model.layers.1", "teacher.net.model.layers.2"]
    # The teacher's units are all frozen and none of their parameters is given to the optimizer.
    teacher_params = {id(p) for name, m in module.named_modules() if name.startswith("teacher.") and LayerClasses()(m)
                      for p in m.parameters()}
    assert teacher_params and not any(p.requires_grad for p in module.teacher.parameters())
    assert not teacher_params & {id(p) for p in module.trainable_parameters()}
    assert not [n for n, m in torch.nn.Sequential(torch.nn.Linear(2, 2)).named_modules() if LayerClasses()(m)]
    assert isinstance(decoder_layer_policy(), CustomPolicy) and "GPT2Block" in DECODER_LAYERS
    with pytest.raises(ValueError, match="at least one class name"):
        LayerClasses([])


def test_fsdp_config_builds_the_strategy_with_the_layer_policy(compose):
    cfg = compose("experiment=lm_pydoc", "trainer=fsdp")
    node = cfg.trainer.strategy
    assert node.state_dict_type == "full" and node.use_orig_params is True and cfg.trainer.precision == "bf16-mixed"
    strategy = instantiate(node)
    assert isinstance(strategy, L.pytorch.strategies.FSDPStrategy)
    # The yaml's list of names is what the policy matches.
    names = LayerClasses(node.auto_wrap_policy.names)
    assert names.names >= {"LlamaDecoderLayer", "GPT2Block"}
    # Lightning runs FSDP on GPUs only (the reason the CPU checks use DDP): it refuses the CPU accelerator.
    with pytest.raises(ValueError, match="requires a GPU accelerator"):
        L.Trainer(strategy=strategy, accelerator="cpu", devices=2, logger=False)


@pytest.mark.slow
def test_full_weights_gathered_from_fsdp_shards_load_into_a_plain_student(tmp_path):
    """What kd-train does after a stage under trainer=fsdp (kd_lightning.app.stage.fit_and_test), on two CPU ranks
    with torch's FSDP itself (Lightning's strategy refuses the CPU): the network inside the sharded module is left
    holding shards, and the gathered full state dict rebuilds the trained student exactly."""
    import json

    import torch.multiprocessing as mp
    from lightning.fabric.plugins.environments.lightning import find_free_network_port

    from .helpers import fsdp_gather_worker

    out = tmp_path / "gathered.json"
    mp.spawn(fsdp_gather_worker, args=(find_free_network_port(), str(out)), nprocs=2, join=True)
    got = json.loads(out.read_text())
    # The student inside the sharded module holds this rank's shards only: why the app cannot measure or save it.
    assert got["inner_numel"] < got["plain_numel"], got
    assert got["teacher_keys"] > 0 and got["moved"] > 1e-3, got  # the teacher was sharded too; the step moved weights
    assert got["max_diff"] < 1e-5, got
