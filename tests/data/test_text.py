"""Text DataModules: the cached tokenizer, packing, prompt masking and one-line errors (small data in tmp_path)."""
import json

import pytest
import torch

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from kd_lightning.data.text import (PromptResponseDataModule, PydocPairsDataModule, PydocTextDataModule,  # noqa: E402
                                    TextFileDataModule, check_context_length, encode_stream, split_by_name,
                                    train_bpe_tokenizer, train_tokenizer)

TEXT = ["Lists are mutable sequences, typically used to store collections of items.\n" * 15,
        "Tuples are immutable sequences, typically used to store heterogeneous data.\n" * 15,
        "Ranges represent an immutable sequence of numbers and are used in for loops.\n" * 15]


def test_tokenizer_cached_by_content_and_digest_checked(tmp_path):
    tok = train_bpe_tokenizer(TEXT, vocab_size=300, cache_dir=tmp_path)
    assert len(tok) == 300 and tok.pad_token == "<pad>" and tok.eos_token == "<eos>"
    (entry,) = list((tmp_path / "tokenizers").iterdir())
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["key"] == entry.name and meta["settings"]["vocab_size"] == 300
    # reused as is: same vocabulary, file untouched
    mtime = (entry / "tokenizer.json").stat().st_mtime_ns
    assert train_bpe_tokenizer(TEXT, vocab_size=300, cache_dir=tmp_path).get_vocab() == tok.get_vocab()
    assert (entry / "tokenizer.json").stat().st_mtime_ns == mtime
    # a tampered file fails the digest: retrained and rewritten, never used
    (entry / "tokenizer.json").write_text((entry / "tokenizer.json").read_text().replace('"<eos>"', '"<EOS>"'))
    again = train_bpe_tokenizer(TEXT, vocab_size=300, cache_dir=tmp_path)
    assert again.eos_token == "<eos>" and again.get_vocab() == tok.get_vocab()
    assert json.loads((entry / "meta.json").read_text())["sha256"] == meta["sha256"]
    # other text or settings: another key
    train_bpe_tokenizer(TEXT[:2], vocab_size=300, cache_dir=tmp_path)
    train_bpe_tokenizer(TEXT, vocab_size=320, cache_dir=tmp_path)
    assert len(list((tmp_path / "tokenizers").iterdir())) == 3
    assert not list(tmp_path.rglob("*.tmp"))



def test_unigram_tokenizer_is_byte_level_and_cached_apart_from_the_bpe(tmp_path):
    uni = train_tokenizer(TEXT, vocab_size=280, cache_dir=tmp_path, kind="unigram")
    bpe = train_tokenizer(TEXT, vocab_size=280, cache_dir=tmp_path, kind="bpe")
    assert type(uni.backend_tokenizer.model).__name__ == "Unigram" and uni.eos_token == "<eos>"
    assert uni.get_vocab() != bpe.get_vocab()
    # Byte-level: text it never saw (other letters, accents, emoji) comes back exactly, nothing is unknown.
    unseen = "Zebras über alles — 42 ✓ 🙂"
    assert uni.decode(uni(unseen)["input_ids"]) == unseen
    assert len(list((tmp_path / "tokenizers").iterdir())) == 2
    assert train_tokenizer(TEXT, vocab_size=280, cache_dir=tmp_path, kind="unigram").get_vocab() == uni.get_vocab()
    assert len(list((tmp_path / "tokenizers").iterdir())) == 2
    with pytest.raises(ValueError, match=r"kind='wordpiece' is not known; use one of bpe, unigram"):
        train_tokenizer(TEXT, kind="wordpiece")

def test_split_by_name_is_deterministic_and_disjoint():
    docs = {f"t{i:02d}": f"text {i}" for i in range(25)}
    train, held = split_by_name(docs, 10)
    assert held == ["text 5", "text 15"] and len(train) == 23
    assert split_by_name(dict(reversed(list(docs.items()))), 10) == (train, held)


def test_text_file_packing_and_labels(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(TEXT))
    dm = TextFileDataModule(path, seq_len=16, batch_size=4, vocab_size=300, val_fraction=0.2)
    dm.setup()
    ds = dm.train_set
    # the stream is cut into rows of 16; only the tail of the last row is padding
    stream_len = int(ds.attention_mask.sum())
    assert ds.input_ids.shape == (-(-stream_len // 16), 16)
    assert torch.equal(ds.labels[ds.attention_mask == 1], ds.input_ids[ds.attention_mask == 1])
    assert torch.all(ds.labels[ds.attention_mask == 0] == -100)
    assert int(ds.input_ids.view(-1)[stream_len - 1]) == dm.tokenizer.eos_token_id
    text = dm.tokenizer.decode(ds.input_ids.view(-1)[:stream_len - 1])
    assert text == "".join("".join(TEXT).splitlines(keepends=True)[:36])  # the first 80% of the 45 lines
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"} and batch["input_ids"].shape == (4, 16)
    assert dm.bytes_per_token > 1


def test_text_folder_holds_out_whole_files(tmp_path):
    for i, t in enumerate(TEXT):
        (tmp_path / f"doc{i}.txt").write_text(t)
    dm = TextFileDataModule(tmp_path, seq_len=32, vocab_size=300, val_every=3)
    train, held = dm.documents()
    assert held == [TEXT[1]] and train == [TEXT[0], TEXT[2]]


def test_pydoc_topics_module():
    dm = PydocTextDataModule(seq_len=64, batch_size=2, vocab_size=400)
    train, held = dm.documents()
    assert len(held) >= 5 and len(train) > 5 * len(held) and not set(train) & set(held)


def test_pydoc_pairs_cut_each_topic_into_prompt_and_response(tmp_path):
    dm = PydocPairsDataModule(prompt_tokens=6, response_tokens=10, batch_size=4, vocab_size=300, cache_dir=tmp_path)
    dm.setup()
    train_docs, held_docs = PydocTextDataModule(vocab_size=300).documents()
    assert dm.documents() == (train_docs, held_docs) and dm.seq_len == 16
    # The same cached tokenizer as the packed-text module (trained on the training topics).
    assert len(list((tmp_path / "tokenizers").iterdir())) == 1
    # The held-out rows are consecutive 16-token windows of each held-out topic (its end-of-sequence
    # token included); a last window with no response token is dropped.
    expected = []
    for doc in held_docs:
        stream = encode_stream(dm.tokenizer, [doc]).tolist()
        expected += [stream[s:s + 16] for s in range(0, len(stream), 16) if len(stream) - s > 6]
    assert [ids for ids, _ in dm.val_set.rows] == expected
    for ids, labels in dm.val_set.rows + dm.train_set.rows:
        assert labels[:6] == [-100] * 6 and labels[6:] == ids[6:] and 7 <= len(ids) <= 16
    assert any(len(ids) < 16 for ids, _ in dm.val_set.rows)  # the topics' last windows are shorter
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape[0] == 4 and (batch["labels"][:, :6] == -100).all()
    assert torch.equal(batch["labels"] != -100, (batch["attention_mask"] == 1) & (torch.arange(16) >= 6))
    # Bits per byte count the held-out responses' bytes only.
    responses = [ids[6:] for ids, _ in dm.val_set.rows]
    nbytes = sum(len(dm.tokenizer.decode(r).encode("utf-8")) for r in responses)
    assert dm.bytes_per_token == pytest.approx(nbytes / sum(map(len, responses)))
    # Rows are the content fingerprint: other windows, another fingerprint.
    other = PydocPairsDataModule(prompt_tokens=8, response_tokens=8, vocab_size=300, cache_dir=tmp_path)
    other.setup()
    assert other.val_set.fingerprint() != dm.val_set.fingerprint()
    with pytest.raises(ValueError, match="must both be >= 1"):
        PydocPairsDataModule(prompt_tokens=0)


def test_prompt_response_masks_prompt_tokens(tmp_path):
    tok = train_bpe_tokenizer(TEXT, vocab_size=300)
    path = tmp_path / "pairs.jsonl"
    pairs = [{"q": "Lists are", "a": " mutable sequences"}, {"q": "Tuples", "a": " are immutable"},
             {"q": "Ranges", "a": " of numbers"}]
    path.write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
    dm = PromptResponseDataModule(path, tok, seq_len=32, batch_size=3, prompt_key="q", response_key="a",
                                  val_fraction=0.34)
    dm.setup()
    assert len(dm.train_set) == 2 and len(dm.val_set) == 1
    from torch.utils.data import DataLoader
    from kd_lightning.data.text import PadCollate
    batch = next(iter(DataLoader(dm.train_set, batch_size=3, collate_fn=PadCollate(tok.pad_token_id))))
    for row, pair in enumerate(pairs[:2]):
        n_prompt = len(tok(pair["q"], add_special_tokens=False)["input_ids"])
        response = tok(pair["a"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        labels = batch["labels"][row]
        assert torch.all(labels[:n_prompt] == -100)
        assert labels[n_prompt:n_prompt + len(response)].tolist() == response
        length = n_prompt + len(response)
        assert batch["attention_mask"][row].tolist() == [1] * length + [0] * (batch["input_ids"].shape[1] - length)


def test_one_line_errors(tmp_path):
    tok = train_bpe_tokenizer(TEXT, vocab_size=300)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextFileDataModule(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        PromptResponseDataModule(tmp_path / "missing.jsonl", tok)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "x", "output": "y"}) + "\n" + json.dumps({"instruction": "z", "output": "w"}) + "\n")
    with pytest.raises(ValueError, match=r"line 1 has no field 'prompt' \(it has \['instruction', 'output'\]\); set "
                                         "prompt_key / response_key"):
        PromptResponseDataModule(bad, tok).setup()
    PromptResponseDataModule(bad, tok, prompt_key="instruction", response_key="output").setup()
    tok.pad_token = None
    with pytest.raises(ValueError, match="has no pad token; set one first"):
        PromptResponseDataModule(bad, tok)

    class Model:
        class config:
            max_position_embeddings = 128

    assert check_context_length(128, Model()) == 128
    with pytest.raises(ValueError, match="seq_len=256 is longer than the model's context of 128 positions"):
        check_context_length(256, Model())


# ------------------------------------------------------------------- bad text data (docs/bad-input.md rows)
def _jsonl(tmp, rows, name="pairs.jsonl"):
    path = tmp / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


PAIRS = [{"prompt": f"Question {i}:", "response": f" answer {i}."} for i in range(6)]


def _pairs(tmp, tok, **kw):
    return lambda: PromptResponseDataModule(_jsonl(tmp, kw.pop("rows", PAIRS)), tok, **kw).setup()


def _latin1(tmp):
    path = tmp / "notes.txt"
    path.write_bytes("first line\nsecond line\ncaf\u00e9 au lait\n".encode("latin-1"))
    return lambda: TextFileDataModule(path, vocab_size=300).setup()


def _latin1_jsonl(tmp, tok):
    path = tmp / "pairs.jsonl"
    path.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9", "response": "c"}\n')
    return lambda: PromptResponseDataModule(path, tok).setup()


def _copied_folder(tmp):
    for name in ("a.txt", "b.txt"):
        (tmp / name).write_text(TEXT[0])
    return lambda: TextFileDataModule(tmp, vocab_size=300, val_every=2).setup()


def _empty_file_held_out(tmp):
    (tmp / "a.txt").write_text(TEXT[0])
    (tmp / "b.txt").write_text("")  # held out: only its end-of-sequence token, nothing to predict
    return lambda: TextFileDataModule(tmp, vocab_size=300, val_every=2).setup()


# input as the docs table writes it -> (build the failing call from tmp_path and a tokenizer, the line expected)
LM_DATA_BAD = {
    "PromptResponseDataModule(<pairs whose prompts are longer than seq_len>, seq_len=4)": (
        lambda tmp, tok: _pairs(tmp, tok, seq_len=4, rows=[{"prompt": "Lists are mutable sequences " * 3,
                                                            "response": " yes"}] * 3 + PAIRS[:1]),
        r"'.*pairs.jsonl': the training part has no token to predict \(3 of 3 rows score none\); every model "
        r"would score a perplexity of 1.00; prompts longer than seq_len=4 leave no response; raise seq_len"),
    "TextFileDataModule(<a folder whose held-out file is empty>)": (
        lambda tmp, tok: _empty_file_held_out(tmp),
        r"test_bad_text_data.*': the held-out part has no token to predict .* perplexity of 1.00; give it more text"),
    "PromptResponseDataModule(<pairs>, val_path=<the same file>)": (
        lambda tmp, tok: lambda: PromptResponseDataModule(_jsonl(tmp, PAIRS), tok, val_path=tmp / "pairs.jsonl").setup(),
        r"pairs.jsonl': every held-out example also appears in the training data \(6 held out\), so the held-out "
        r"scores would measure memorisation; hold out other pairs"),
    "PromptResponseDataModule(<a file with one pair>)": (
        lambda tmp, tok: _pairs(tmp, tok, rows=PAIRS[:1]),
        r"every held-out example also appears in the training data \(1 held out\)"),
    "TextFileDataModule(<a folder of two identical files>)": (
        lambda tmp, tok: _copied_folder(tmp), r"every held-out example also appears in the training data"),
    "PromptResponseDataModule(<a row whose response is 42>)": (
        lambda tmp, tok: _pairs(tmp, tok, rows=PAIRS + [{"prompt": "Six times seven:", "response": 42}]),
        r"pairs.jsonl' line 7 field 'response' is int \(42\), not text; write it as a JSON string"),
    "PromptResponseDataModule(<a row whose prompt is null>)": (
        lambda tmp, tok: _pairs(tmp, tok, rows=[{"prompt": None, "response": "x"}] + PAIRS),
        r"line 1 field 'prompt' is NoneType \(None\), not text"),
    "PromptResponseDataModule(<pairs>, val_fraction=1.5)": (
        lambda tmp, tok: _pairs(tmp, tok, val_fraction=1.5),
        r"^val_fraction=1.5 must be a fraction strictly between 0 and 1 \(the share held out\); set e.g. val_fraction=0.1$"),
    "TextFileDataModule(<a file>, val_fraction=0)": (
        lambda tmp, tok: lambda: TextFileDataModule(_jsonl(tmp, PAIRS), val_fraction=0),
        r"^val_fraction=0 must be a fraction strictly between 0 and 1"),
    "TextFileDataModule(<a Latin-1 file>)": (
        lambda tmp, tok: _latin1(tmp),
        r"notes.txt' line 3 is not UTF-8 \(byte 0xe9 at offset 26\); convert the file to UTF-8"),
    "PromptResponseDataModule(<a Latin-1 .jsonl>)": (
        lambda tmp, tok: _latin1_jsonl(tmp, tok), r"pairs.jsonl' line 2 is not UTF-8 \(byte 0xe9"),
}


@pytest.mark.parametrize("case", sorted(LM_DATA_BAD))
def test_bad_text_data_is_one_line_before_training(tmp_path, case):
    tok = train_bpe_tokenizer(TEXT, vocab_size=300)
    build, expected = LM_DATA_BAD[case]
    with pytest.raises(ValueError, match=expected) as info:
        build(tmp_path, tok)()
    assert "\n" not in str(info.value)


def test_truncation_that_empties_some_rows_is_reported_with_counts(tmp_path):
    tok = train_bpe_tokenizer(TEXT, vocab_size=300)
    rows = [{"prompt": "Lists are mutable sequences " * 6, "response": " yes"}] + PAIRS
    dm = PromptResponseDataModule(_jsonl(tmp_path, rows), tok, seq_len=16, val_fraction=0.3)
    with pytest.warns(UserWarning, match=r"pairs.jsonl': 1 of 5 training rows have no token to predict"):
        dm.setup()
    assert len(dm.train_set) == 5  # it still runs: the other rows are learned


def test_held_out_lines_that_also_occur_in_training_are_allowed_when_the_text_differs(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("alpha beta\n" * 5 + "gamma delta\n")
    train, held = TextFileDataModule(path, vocab_size=300, val_fraction=0.4).documents()
    assert held == ["alpha beta\ngamma delta\n"] and train == ["alpha beta\n" * 4]
