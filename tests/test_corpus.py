import json

import pandas as pd
import pytest
from conftest import run_cli

from saescope import CorpusConfig, SaescopeError, build_corpus, make_corpus, read_corpus
from saescope.corpus import split_sentences


def test_split_sentences_keeps_abbreviations_inside_numbers_and_splits_on_capitals():
    text = 'He paid $3.5 million. "It works," she said. Then U.S. officials left? Yes.'
    assert split_sentences(text) == [
        "He paid $3.5 million.",
        '"It works," she said.',
        "Then U.S. officials left?",
        "Yes.",
    ]


def test_news_builtin_is_split_into_short_runs_with_stable_ids():
    df = build_corpus(CorpusConfig(source="news", sentences_per_chunk=2))
    assert len(df) > 30000  # 3,824 articles become tens of thousands of short texts
    assert df["id"].is_unique and df["text"].is_unique
    assert df["text"].str.len().median() < 400
    assert df["id"].str.match(r"news-\d+-\d+$").all()
    assert df["doc"].nunique() > 3500
    again = build_corpus(CorpusConfig(source="news", sentences_per_chunk=2))
    assert df["id"].tolist() == again["id"].tolist()


def test_tweets_builtin_and_shuffle_limit_are_seeded():
    a = build_corpus(CorpusConfig(source="tweets", shuffle=True, seed=3, limit=50))
    b = build_corpus(CorpusConfig(source="tweets", shuffle=True, seed=3, limit=50))
    c = build_corpus(CorpusConfig(source="tweets", shuffle=True, seed=4, limit=50))
    assert len(a) == 50 and a["id"].tolist() == b["id"].tolist() != c["id"].tolist()


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv", ".parquet"])
def test_local_files_with_text_column_length_filter_and_dedupe(tmp_path, suffix, capsys):
    texts = [
        "a short one",
        "the first real document here",
        "another real document here",
        "the first real document here",
        "x" * 50,
    ]
    path = tmp_path / f"docs{suffix}"
    df = pd.DataFrame({"body": texts, "key": [f"k{i}" for i in range(len(texts))]})
    if suffix == ".txt":
        path.write_text("\n".join(texts) + "\n")
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in df.to_dict("records")))
    elif suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path)
    col = "text" if suffix == ".txt" else "body"
    out = build_corpus(CorpusConfig(source=str(path), text_column=col, min_chars=12, max_chars=40))
    assert out["text"].tolist() == ["the first real document here", "another real document here"]
    said = capsys.readouterr().err  # every dropped text is counted, by its reason
    assert "5 texts read; dropped 1 shorter than 12 characters (--min-chars), 1 longer" in said
    assert "1 duplicates (--dedupe); 2 kept" in said
    if suffix != ".txt":
        keyed = build_corpus(
            CorpusConfig(source=str(path), text_column=col, id_column="key", min_chars=12)
        )
        assert keyed["id"].tolist()[:2] == ["k1", "k2"]


def test_huggingface_dataset_from_local_folders(tmp_path):
    import datasets

    rows = {"sentence": [f"sentence number {i} about topic {i % 3}" for i in range(30)]}
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(saved))
    out = build_corpus(CorpusConfig(source=str(saved), text_column="sentence", hf_split="train"))
    assert len(out) == 30
    # a folder of data files goes through datasets.load_dataset, as a hub name would
    files = tmp_path / "files"
    files.mkdir()
    pd.DataFrame(rows).to_csv(files / "train.csv", index=False)
    out2 = build_corpus(CorpusConfig(source=f"hf:{files}", text_column="sentence"))
    assert out2["text"].tolist() == out["text"].tolist()


def test_bad_inputs_give_clear_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(SaescopeError, match="empty"):
        build_corpus(CorpusConfig(source=str(empty)))
    csv = tmp_path / "t.csv"
    pd.DataFrame({"body": ["some document text here"]}).to_csv(csv, index=False)
    with pytest.raises(SaescopeError, match="no column 'text'.*body"):
        build_corpus(CorpusConfig(source=str(csv)))
    odd = tmp_path / "t.docx"
    odd.write_text("hello")
    with pytest.raises(SaescopeError, match="unknown file type"):
        build_corpus(CorpusConfig(source=str(odd)))
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(SaescopeError, match="cannot read"):
        build_corpus(CorpusConfig(source=str(bad)))
    with pytest.raises(SaescopeError, match="does not exist"):
        build_corpus(CorpusConfig(source=str(tmp_path / "missing.csv")))
    with pytest.raises(SaescopeError, match="no corpus"):
        read_corpus(tmp_path / "nowhere")


def test_run_skips_same_config_and_refuses_a_different_one(tmp_path):
    run = str(tmp_path / "r")
    cfg = CorpusConfig(run=run, source="tweets", limit=20)
    path = make_corpus(cfg)
    stamp = path.stat().st_mtime_ns
    assert make_corpus(cfg) == path and path.stat().st_mtime_ns == stamp
    with pytest.raises(SaescopeError, match="other inputs or options: option limit: 20 -> 30"):
        make_corpus(CorpusConfig(run=run, source="tweets", limit=30))
    make_corpus(CorpusConfig(run=run, source="tweets", limit=30, overwrite=True))
    assert len(read_corpus(run)) == 30


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    proc = run_cli(
        "corpus", "--run", str(tmp_path / "r"), "--source", str(tmp_path / "x.csv"), check=False
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
    ok = run_cli("corpus", "--run", str(tmp_path / "r"), "--source", "tweets", "--limit", "5")
    assert ok.stdout.strip().endswith("corpus.parquet")


def test_duplicate_ids_are_an_error_naming_them_never_a_silent_drop(tmp_path):
    import datasets

    keys = ["a", "b", "a", "c", "b", "d"]
    df = pd.DataFrame({"key": keys, "text": [f"document number {i} of the file" for i in range(6)]})
    csv = tmp_path / "t.csv"
    df.to_csv(csv, index=False)
    twice = r"ids must be unique, but 'a' at rows 0, 2; 'b' at rows 1, 4 "
    with pytest.raises(SaescopeError, match=twice):
        build_corpus(CorpusConfig(source=str(csv), id_column="key"))
    # an exact duplicate record goes with --dedupe first: its id then clashes with nothing
    again = tmp_path / "again.csv"
    pd.concat([df.iloc[:2], df.iloc[[0]]]).to_csv(again, index=False)
    kept = build_corpus(CorpusConfig(source=str(again), id_column="key"))
    assert kept["id"].tolist() == ["a", "b"]
    # a Hugging Face dataset with an id column is checked the same way
    saved = tmp_path / "hf"
    datasets.Dataset.from_pandas(df).save_to_disk(str(saved))
    with pytest.raises(SaescopeError, match=r"'a' at rows 0, 2; 'b' at rows 1, 4"):
        build_corpus(CorpusConfig(source=str(saved), id_column="key"))


def test_json_ids_with_a_gap_and_texts_that_are_lists_are_read_or_refused(tmp_path):
    """A JSON id column with a null read as floats: the null is an error naming its row
    (it became the id "NaN"), and the other ids stay "3", not "3.0". A text that is a
    list is an error (it was stored as its Python repr)."""
    rows = [{"id": 1, "text": "the first real text here"}, {"id": None, "text": "another real text"},
            {"id": 3, "text": "a third real text here"}]  # fmt: skip
    path = tmp_path / "gap.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(SaescopeError, match="id column 'id' is empty at rows 1"):
        build_corpus(CorpusConfig(source=str(path), id_column="id"))
    del rows[1]
    rows.append({"id": 4.0, "text": "a fourth real text here"})
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert build_corpus(CorpusConfig(source=str(path), id_column="id"))["id"].tolist() == [
        "1", "3", "4"
    ]  # fmt: skip
    rows.append({"id": 5, "text": ["a", "list"]})
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(SaescopeError, match="holds lists or mappings, not texts, at rows 3"):
        build_corpus(CorpusConfig(source=str(path), id_column="id"))
    lists = tmp_path / "lists.parquet"  # Parquet gives list cells as numpy arrays
    pd.DataFrame({"text": [["a long enough text"], ["and another one here"]]}).to_parquet(lists)
    with pytest.raises(SaescopeError, match="holds lists or mappings, not texts, at rows 0, 1"):
        build_corpus(CorpusConfig(source=str(lists)))
