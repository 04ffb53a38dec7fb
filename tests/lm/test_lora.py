"""kd_lightning/lm/lora.py: a LoRA student trains through CausalLMDistillationModule with only its adapters in
the optimizer and the checkpoint, and is written as an adapter (or merged) that loads back."""
import functools

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from kd_lightning import CausalLMDistillationModule
from kd_lightning.losses import TokenKD

from .helpers import ragged_batch, rows

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

VOCAB = 40


def _llama(seed, vocab=VOCAB, **kw):
    from kd_lightning.models.lm import build_causal_lm

    torch.manual_seed(seed)
    return build_causal_lm("llama", vocab_size=vocab, hidden_size=kw.pop("hidden_size", 16), num_layers=2,
                           num_heads=2, intermediate_size=32, max_position_embeddings=16, **kw)


def _lora(seed=2, vocab=VOCAB):
    from kd_lightning.lm.lora import lora_student

    return lora_student(_llama(seed, vocab), r=4, alpha=8, target_modules=["q_proj", "v_proj"])


def _fit(module, tmp_path, steps=4):
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, max_steps=steps,
                        default_root_dir=tmp_path)
    batch = ragged_batch([12, 9, 5, 12], width=12, vocab=VOCAB)
    trainer.fit(module, DataLoader(rows(batch), batch_size=2))
    return trainer


def test_lora_student_trains_only_its_adapters_and_checkpoints_only_them(tmp_path):
    student = _lora()
    base = {k: v.detach().clone() for k, v in student.state_dict().items() if "lora_" not in k}
    adapters = {k: v.detach().clone() for k, v in student.state_dict().items() if "lora_" in k}
    module = CausalLMDistillationModule(student, _llama(1, hidden_size=24), TokenKD(ce_weight=0.5),
                                        optimizer=functools.partial(torch.optim.AdamW, lr=1e-2))
    optimizer = module.configure_optimizers()
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    lora_params = {id(p) for n, p in student.named_parameters() if "lora_" in n}
    assert in_optimizer == lora_params and len(lora_params) == 2 * 2 * 2  # A and B, q and v, two layers
    trainer = _fit(module, tmp_path)
    after = student.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())  # the base does not move
    assert any(not torch.equal(after[k], v) for k, v in adapters.items())  # the adapters trained
    path = tmp_path / "lora.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    saved = ckpt["state_dict"]
    assert set(saved) == {"student." + k for k in adapters}  # adapters only: no base, no teacher
    # Loading restores the base from the live model (checked against the digest) and the adapters from the file.
    fresh = CausalLMDistillationModule.load_from_checkpoint(path, student=_lora(), teacher=_llama(1, hidden_size=24))
    for k, v in after.items():
        assert torch.equal(fresh.student.state_dict()[k], v), k
    with pytest.raises(ValueError, match="frozen weights hash to"):  # adapters over another base: refused
        CausalLMDistillationModule.load_from_checkpoint(path, student=_lora(seed=7), teacher=_llama(1, hidden_size=24))


def test_adapter_and_merged_model_written_and_loaded_back(tmp_path):
    from kd_lightning.data.text import train_bpe_tokenizer

    tok = train_bpe_tokenizer(["def add(a, b):\n    return a + b\n" * 20, "the lazy dog\n" * 20], vocab_size=300)
    student = _lora(vocab=len(tok))
    with torch.no_grad():  # adapters that change the outputs (LoRA's B starts at zero)
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    module = CausalLMDistillationModule(student, tokenizer=tok)
    ids = torch.tensor([tok("def add(a, b):")["input_ids"]])[:, :12]
    with torch.no_grad():
        expected = student.eval()(input_ids=ids).logits
        base_only = _llama(2, len(tok)).eval()(input_ids=ids).logits
    assert not torch.allclose(expected, base_only, atol=1e-4)
    adapter_dir = module.save_student_pretrained(tmp_path / "adapter")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert "adapter_config.json" in files and "config.json" not in files
    loaded = peft.PeftModel.from_pretrained(_llama(2, len(tok)), adapter_dir).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, expected, atol=1e-5)
    merged_dir = module.save_student_pretrained(tmp_path / "merged", merged=True)
    plain = transformers.AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert not any("lora_" in k for k in plain.state_dict())
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, expected, atol=1e-5)
    assert any("lora_" in n for n, _ in student.named_parameters())  # merging worked on a copy


def test_merged_export_of_a_plain_student_is_refused(tmp_path):
    with pytest.raises(TypeError, match="merged=True needs a PEFT student"):
        CausalLMDistillationModule(_llama(2)).save_student_pretrained(tmp_path / "x", object(), merged=True)
