"""The command line: a parser that loads nothing heavy, full --help, --debug, one default run."""

import dataclasses
import importlib
import subprocess
import sys

import pytest

import saescope
from saescope.cli import CUSTOM, STAGES, main
from saescope.paths import DEFAULT_RUN

HEAVY = (
    "torch",
    "pandas",
    "pyarrow",
    "transformers",
    "sentence_transformers",
    "sklearn",
    "matplotlib",
    "scipy",
)


def test_building_the_parser_imports_no_heavy_library():
    code = (
        "import sys, saescope.cli\n"
        "saescope.cli.build_parser()\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert proc.stdout.strip() == ""


def test_help_lists_every_command_and_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name, command in {**STAGES, **CUSTOM}.items():
        assert name in out and command.summary[:30] in " ".join(out.split())
    for name, stage in STAGES.items():
        with pytest.raises(SystemExit):
            main([name, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        cls = getattr(importlib.import_module(stage.options), stage.config)
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            assert flag in out, (name, flag)
            assert " ".join(f.metadata["help"].split())[:40] in out, (name, flag)
        # the stage's own module docstring is the description
        doc = importlib.import_module(stage.module).__doc__
        assert " ".join(doc.split())[:50] in out


def test_every_public_name_resolves_and_embed_is_the_module():
    for name in saescope.__all__:
        assert getattr(saescope, name) is not None, name
    embed_module = importlib.import_module("saescope.embed")
    assert saescope.embed is embed_module  # the module, not a function
    assert saescope.embed_corpus is embed_module.run
    assert saescope.make_corpus is importlib.import_module("saescope.corpus").run
    with pytest.raises(AttributeError):
        _ = saescope.no_such_name


def test_every_stage_defaults_to_the_same_run_directory():
    for stage in STAGES.values():
        cls = getattr(importlib.import_module(stage.options), stage.config)
        run = {f.name: f.default for f in dataclasses.fields(cls)}.get("run")
        assert run in (None, DEFAULT_RUN), stage  # convert has no run
    assert DEFAULT_RUN == "runs/default"


def test_light_option_modules_agree_with_the_stages():
    from saescope.examples import SPLIT_KINDS
    from saescope.explain import EXPLAINERS
    from saescope.options import explain, keywords
    from saescope.options.score import EMBEDDING_SCORERS, LLM_SCORERS, SCORERS
    from saescope.scoring import embedding, keyword_relevance
    from saescope.scoring.llm import SCORERS as LLM_SCORER_MODULES

    assert EMBEDDING_SCORERS == (embedding.NAME, keyword_relevance.NAME)
    assert tuple(LLM_SCORER_MODULES) == LLM_SCORERS
    assert SCORERS == EMBEDDING_SCORERS + LLM_SCORERS
    assert explain.EXPLAINERS == EXPLAINERS
    assert keywords.SPLIT_KINDS == SPLIT_KINDS
    for stage in STAGES.values():  # each stage module uses (re-exports) its config class
        cls = getattr(importlib.import_module(stage.options), stage.config)
        assert getattr(importlib.import_module(stage.module), stage.config) is cls


def test_corpus_embed_train_without_run_share_runs_default(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    topics = ["rain and wind", "stock prices", "football match", "new vaccine", "city council"]
    lines = [f"Report {i}: a short note about {topics[i % 5]} number {i}." for i in range(60)]
    (tmp_path / "texts.txt").write_text("\n".join(lines))
    assert main(["corpus", "--source", "texts.txt"]) == 0
    assert main(["embed", "--batch-size", "32"]) == 0
    train = ["--d-sae", "32", "--k", "4", "--batch-size", "16", "--max-steps", "4"]
    assert main(["train", *train, "--init-rows", "64", "--progress", "false"]) == 0
    out = capsys.readouterr().out.split()
    assert out[0].endswith("runs/default/corpus.parquet") and out[1].endswith("runs/default/acts")
    root = tmp_path / "runs" / "default"
    assert (root / "acts" / "manifest.json").exists() and (
        root / "sae" / "sae.safetensors"
    ).exists()
    assert (root / "sae" / "metrics.json").exists()  # train ran eval on the same directory


def test_an_unloadable_model_names_its_cause_and_debug_shows_the_traceback(
    tmp_path, monkeypatch, capsys
):
    run = str(tmp_path / "r")
    (tmp_path / "t.txt").write_text("one short text for the corpus\nanother short text here")
    assert main(["corpus", "--run", run, "--source", str(tmp_path / "t.txt")]) == 0
    bad = ["embed", "--run", run, "--model", str(tmp_path / "no-such-model")]
    capsys.readouterr()
    assert main(bad) == 2
    err = capsys.readouterr().err
    # one line: the wrapped exception's type and message, and how to see more
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "cannot load sentence-transformers model" in err and "no-such-model" in err
    cause = err.split("no-such-model': ", 1)[1]
    assert cause.split(":")[0].isidentifier() and "--debug shows the traceback" in err
    for argv, env in [(["--debug", *bad], None), ([*bad, "--debug"], None), (bad, "1")]:
        if env:
            monkeypatch.setenv("SAESCOPE_DEBUG", env)
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("Traceback (most recent call last)")
        assert "The above exception was the direct cause of the following exception" in err
        assert "saescope.errors.SaescopeError: cannot load sentence-transformers model" in err
