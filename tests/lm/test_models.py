"""LM builders: preset sizes and offline-only loading."""
import pytest

pytest.importorskip("transformers")

from kd_lightning.models.lm import build_causal_lm, count_parameters, load_causal_lm, lm_preset  # noqa: E402


def test_preset_sizes_at_vocab_2048():
    # tied embeddings: 2048·128 + 4·(4·128² + 3·128·336 + 2·128) + 128
    assert count_parameters(lm_preset("lm_teacher_1m")) == 2048 * 128 + 4 * (4 * 128 ** 2 + 3 * 128 * 336 + 256) + 128
    assert count_parameters(lm_preset("lm_teacher_1m")) == 1_041_536
    assert count_parameters(lm_preset("lm_student_150k")) == 153_840


def test_errors():
    with pytest.raises(ValueError, match="not divisible by num_heads 3"):
        build_causal_lm(vocab_size=10, hidden_size=16, num_layers=1, num_heads=3, intermediate_size=8)
    with pytest.raises(ValueError, match="arch='bert' is not known"):
        build_causal_lm("bert", vocab_size=10, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=8)
    with pytest.raises(ValueError, match="not on this machine and nothing is downloaded; point at a local directory"):
        load_causal_lm("some-org/some-model-that-is-not-here")


def test_round_trip_local_dir(tmp_path):
    m = build_causal_lm("gpt2", vocab_size=10, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=8)
    m.save_pretrained(tmp_path)
    assert count_parameters(load_causal_lm(tmp_path)) == count_parameters(m)
