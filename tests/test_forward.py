"""Networks called the way users' models expect: keyword inputs (Hugging Face batches) and logits read
from tensors, ModelOutputs, dicts and tuples; and an encoder classifier distilled end to end with
DistilBERT/TinyBERT-style hidden-state and attention terms through taps on unmodified models."""
from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kd_lightning import DistillationModule
from kd_lightning.batch import unpack
from kd_lightning.forward import batch_size, call, head, logits_of
from kd_lightning.losses import CE, KD, AttentionMaps, Compose, HiddenStates
from kd_lightning.losses import functional as KF

transformers = pytest.importorskip("transformers")  # an ordinary dependency


def test_logits_are_read_from_every_usual_output():
    z = torch.randn(2, 3)
    assert logits_of(z) is z
    assert logits_of((z, torch.zeros(2, 8))) is z
    assert logits_of({"logits": z, "hidden": None}) is z
    assert logits_of(transformers.modeling_outputs.SequenceClassifierOutput(logits=z)) is z
    with pytest.raises(TypeError, match="student returned a str; expected logits"):
        logits_of("nope", "student")


def test_keyword_inputs_are_passed_by_name_and_sliced_together():
    class Kw(nn.Module):
        def forward(self, input_ids, attention_mask):
            return (input_ids * attention_mask).float()

    x = {"input_ids": torch.tensor([[1, 2], [3, 4], [5, 6]]), "attention_mask": torch.tensor([[1, 0]] * 3)}
    assert torch.equal(call(Kw(), x), torch.tensor([[1.0, 0.0], [3.0, 0.0], [5.0, 0.0]]))
    assert batch_size(x) == 3 and batch_size(torch.zeros(5, 2)) == 5
    assert {k: v.shape[0] for k, v in head(x, 2).items()} == {"input_ids": 2, "attention_mask": 2}


def test_a_hugging_face_batch_unpacks_into_keyword_inputs_and_labels():
    batch = {"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 4),
             "token_type_ids": torch.zeros(2, 4), "labels": torch.tensor([0, 1]), "index": torch.tensor([7, 8])}
    b = unpack(batch)
    assert set(b.x) == {"input_ids", "attention_mask", "token_type_ids"}
    assert torch.equal(b.y, batch["labels"]) and torch.equal(b.index, batch["index"])
    only = unpack(batch, input_key=["input_ids"])
    assert set(only.x) == {"input_ids"}
    with pytest.raises(KeyError, match="no input key"):
        unpack(batch, input_key=["pixel_values"])


# ------------------------------------------------------------------------- hidden states, attention
def test_hidden_state_loss_by_hand():
    s = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    t = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])
    # mse: token 0 -> (0 + 1) / 2, token 1 -> (0 + 1) / 2 -> mean 0.5
    assert KF.hidden_state_loss(s, t, "mse").item() == pytest.approx(0.5)
    # cosine: token 0 -> 1 - 1/sqrt(2), token 1 -> 1 - 1 = 0
    assert KF.hidden_state_loss(s, t, "cosine").item() == pytest.approx((1 - 2 ** -0.5) / 2)
    # the mask keeps token 0 only
    assert KF.hidden_state_loss(s, t, "cosine", mask=torch.tensor([[1, 0]])).item() == pytest.approx(1 - 2 ** -0.5)
    assert KF.hidden_state_loss(s, t, "mse", mask=torch.zeros(1, 2)).item() == 0.0
    with pytest.raises(ValueError, match="equal shapes"):
        KF.hidden_state_loss(s, t[..., :1])


def test_attention_map_loss_by_hand_and_masked_entries():
    a = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])
    b = torch.tensor([[[[1.0, 0.0], [1.0, float("-inf")]]]])
    # squared differences 0.25, 0.25, 0, 0 (the -inf counts as 0) -> mean 0.125
    assert KF.attention_map_loss(a, b).item() == pytest.approx(0.125)


def tiny_bert(hidden: int, layers: int, seed: int):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=32, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=2, intermediate_size=2 * hidden, num_labels=2,
                                     max_position_embeddings=16, attn_implementation="eager",
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertForSequenceClassification(config)


class TokenTask(Dataset):
    """Label 1 when token 3 occurs in the sequence: a task an attention layer learns in a few steps."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(4, 32, (n, 8), generator=g)
        flip = torch.rand(n, generator=g) < 0.5
        pos = torch.randint(0, 8, (n,), generator=g)
        self.ids[flip, pos[flip]] = 3
        self.labels = flip.long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(8, dtype=torch.long),
                "token_type_ids": torch.zeros(8, dtype=torch.long), "labels": self.labels[i]}


def fit(module, loader, steps, tmp_path):
    L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
              num_sanity_val_steps=0).fit(module, loader)


def accuracy(net, data):
    net.eval()
    with torch.no_grad():
        b = unpack(next(iter(DataLoader(data, batch_size=len(data)))))
        return (logits_of(call(net, b.x)).argmax(-1) == b.y).float().mean().item()


@pytest.mark.slow
def test_tiny_bert_distills_into_a_smaller_bert_with_hidden_and_attention_terms(tmp_path):
    train, test = TokenTask(512, seed=0), TokenTask(256, seed=1)
    loader = DataLoader(train, batch_size=32, shuffle=True)
    adam = functools.partial(torch.optim.Adam, lr=3e-3)
    teacher = tiny_bert(hidden=32, layers=2, seed=0)
    fit(DistillationModule(teacher, None, loss=CE(), optimizer=adam), loader, 150, tmp_path)
    assert accuracy(teacher, test) > 0.9

    student = tiny_bert(hidden=16, layers=1, seed=1)
    loss = Compose([
        KD(temperature=2.0, ce_weight=0.5, kd_weight=0.5),
        # TinyBERT's layer map: the student's one layer learns the teacher's last, through a projection.
        HiddenStates(student_layers=["bert.encoder.layer.0"], teacher_layers=["bert.encoder.layer.1"], weight=1.0),
        AttentionMaps(student_layers=["bert.encoder.layer.0.attention.self:1"],
                      teacher_layers=["bert.encoder.layer.1.attention.self:1"], weight=1.0),
    ])
    module = DistillationModule(student, teacher, loss=loss, optimizer=adam)
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    fit(module, loader, 150, tmp_path)
    projection = loss.losses[1].adapters[0]
    assert isinstance(projection, nn.Linear) and (projection.in_features, projection.out_features) == (16, 32)
    optimized = {id(p) for p in module.trainable_parameters()}
    assert all(id(p) in optimized for p in projection.parameters())
    assert not any(id(p) in optimized for p in teacher.parameters())
    assert all(torch.equal(frozen[k], v) for k, v in teacher.state_dict().items())
    assert accuracy(student, test) > 0.85
    metrics = {k for k in module.train_terms}
    assert {"ce", "kd", "hidden", "attention", "loss"} <= metrics


def test_a_teacher_in_another_dtype_or_on_the_meta_device_is_named_at_construction():
    with pytest.raises(ValueError, match="teacher's weights are torch.float64 but the student's are torch.float32"):
        DistillationModule(tiny_bert(16, 1, 0), tiny_bert(16, 1, 1).double(), loss=KD())
    with torch.device("meta"):
        ghost = nn.Linear(4, 2)
    with pytest.raises(ValueError, match="meta device"):
        DistillationModule(nn.Linear(4, 2), ghost, loss=KD())


def test_lm_logits_pass_the_mask_only_to_models_that_name_it():
    from kd_lightning.forward import call_signature, lm_logits

    seen = {}

    class Masked(nn.Module):
        def forward(self, input_ids, attention_mask=None, use_cache=True):
            seen.update(mask=attention_mask, use_cache=use_cache)
            return {"logits": input_ids.float().unsqueeze(-1)}

    class Plain(nn.Module):
        def forward(self, input_ids):
            return (input_ids.float().unsqueeze(-1), "extra")

    ids, mask = torch.tensor([[1, 2, 0]]), torch.tensor([[1, 1, 0]])
    assert call_signature(Masked()) == (True, True) and call_signature(Plain()) == (False, False)
    out = lm_logits(Masked(), ids, mask, *call_signature(Masked()))
    assert torch.equal(seen["mask"], mask) and seen["use_cache"] is False and out.shape == (1, 3, 1)
    assert torch.equal(lm_logits(Plain(), ids, mask, *call_signature(Plain())), ids.float().unsqueeze(-1))
