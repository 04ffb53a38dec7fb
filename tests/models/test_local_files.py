"""A local Hugging Face teacher is checked before it is loaded: missing, empty, cut or absent weight
files and a tokenizer other than the data's each give one line naming the file."""
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from kd_lightning.data.text import train_bpe_tokenizer  # noqa: E402
from kd_lightning.models.lm import build_causal_lm, count_parameters, load_causal_lm  # noqa: E402
from kd_lightning.models.local_files import check_model_dir, check_teacher_tokenizer  # noqa: E402

TEXT = ["Lists are mutable sequences, typically used to store collections of items.\n" * 10]
OTHER = ["Tuples are immutable sequences, typically used to store heterogeneous data.\n" * 10]


def _saved(tmp, **kw):
    model = build_causal_lm("gpt2", vocab_size=300, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=8)
    model.save_pretrained(tmp, **kw)
    return model


def _no_weights(tmp):
    _saved(tmp)
    (tmp / "model.safetensors").unlink()


def _cut(name, keep):
    def damage(tmp):
        model = _saved(tmp)
        if name.endswith(".bin"):  # the older torch format, as older transformers save it
            (tmp / "model.safetensors").unlink()
            torch.save(model.state_dict(), tmp / name)
        blob = (tmp / name).read_bytes()
        (tmp / name).write_bytes(blob[:keep if keep >= 0 else len(blob) + keep])
    return damage


def _missing_shard(tmp):
    _saved(tmp, max_shard_size="4KB")
    shards = sorted(tmp.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()


# input as the docs table writes it -> (damage a saved teacher directory, the line expected)
TEACHER_BAD = {
    "teacher=hf_local teacher.name_or_path=<a directory without weights>": (
        _no_weights, r"model directory '.*' holds no weights \(no model.safetensors or pytorch_model.bin, and no shard "
                     r"index\); copy the weight files next to config.json"),
    "teacher=hf_local teacher.name_or_path=<a directory with a truncated model.safetensors>": (
        _cut("model.safetensors", -100), r"weights file '.*model.safetensors' is truncated or damaged \((\d+) bytes, its "
                                         r"header describes (\d+)\); copy it again"),
    "teacher=hf_local teacher.name_or_path=<a directory with an empty model.safetensors>": (
        _cut("model.safetensors", 0), r"weights file '.*model.safetensors' is empty \(0 bytes\)"),
    "teacher=hf_local teacher.name_or_path=<a directory with a truncated pytorch_model.bin>": (
        _cut("pytorch_model.bin", -100), r"weights file '.*pytorch_model.bin' \(\d+ bytes\) is truncated or not a torch "
                                         r"checkpoint"),
    "teacher=hf_local teacher.name_or_path=<a directory missing a weight shard>": (
        _missing_shard, r"shard index '.*model.safetensors.index.json' names 'model-0000\d-of-0000\d.safetensors', which "
                        r"is not in the directory \(1 of \d shards missing\)"),
}


@pytest.mark.parametrize("case", sorted(TEACHER_BAD))
def test_a_damaged_teacher_directory_is_one_line_naming_the_file(tmp_path, case):
    damage, expected = TEACHER_BAD[case]
    damage(tmp_path)
    with pytest.raises(ValueError, match=expected) as info:
        load_causal_lm(tmp_path)
    assert "\n" not in str(info.value)


def test_a_complete_directory_loads_sharded_or_not(tmp_path):
    model = _saved(tmp_path / "one")
    assert [p.name for p in check_model_dir(tmp_path / "one")] == ["model.safetensors"]
    assert count_parameters(load_causal_lm(tmp_path / "one")) == count_parameters(model)
    _saved(tmp_path / "shards", max_shard_size="4KB")
    assert len(check_model_dir(tmp_path / "shards")) > 1
    assert count_parameters(load_causal_lm(tmp_path / "shards")) == count_parameters(model)


def test_a_teacher_with_another_tokenizer_is_refused(tmp_path):
    data_tok = train_bpe_tokenizer(TEXT, vocab_size=280)
    _saved(tmp_path)
    assert check_teacher_tokenizer(tmp_path, data_tok) is None  # no tokenizer saved: nothing to compare
    train_bpe_tokenizer(OTHER, vocab_size=280).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"teacher '.*' tokenizes differently from the data \(\d+ tokens differ, e.g. "
                                         r"'.*': (absent|id \d+) for the teacher, (absent|id \d+) for the data\); token-level KD pairs ids, so "
                                         r"use the teacher's tokenizer for the data \(data.tokenizer=.*\)$"):
        check_teacher_tokenizer(tmp_path, data_tok)
    data_tok.save_pretrained(tmp_path)
    assert check_teacher_tokenizer(tmp_path, data_tok).get_vocab() == data_tok.get_vocab()
