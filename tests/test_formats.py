"""Format detection, clear errors on bad files, SAELens export round trips, `saescope convert`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import random_sae_weights
from safetensors.torch import save_file

from saescope import SaescopeError, load_sae
from saescope.cli import main as cli_main
from saescope.convert import ConvertConfig, run
from saescope.sae import SAE, SAEConfig, detect_format, export_saelens

D_IN, D_SAE = 12, 30


def native_sae(arch: str = "topk", input_norm: str = "none", seed: int = 0) -> SAE:
    g = torch.Generator().manual_seed(seed)
    cfg = SAEConfig(
        arch,
        D_IN,
        D_SAE,
        k=5 if arch in ("topk", "batchtopk") else None,
        input_norm=input_norm,
        metadata={"hook_name": "blocks.3.hook_resid_post"},
    )
    return SAE.from_tensors(cfg, random_sae_weights(g, arch, D_IN, D_SAE, 0.4, 0.25))


def x_rows(n: int = 64) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(9)) + 0.3


def saelens_folder(folder: Path, cfg: dict, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    return folder


def standard_saelens(folder: Path, **cfg_kw) -> Path:
    g = torch.Generator().manual_seed(1)
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32"} | cfg_kw
    tensors = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g),
        "b_enc": torch.zeros(D_SAE),
        "W_dec": torch.randn(D_SAE, D_IN, generator=g),
        "b_dec": torch.zeros(D_IN),
    }
    return saelens_folder(folder, cfg, tensors)


# -- detection and loading -------------------------------------------------------------


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu"])
def test_native_and_saelens_round_trip(tmp_path: Path, arch: str) -> None:
    sae = native_sae(arch, input_norm="row_standardize" if arch == "relu" else "none")
    sae.save(tmp_path / "native")
    export_saelens(sae, tmp_path / "lens")
    assert detect_format(tmp_path / "native").format == "saescope"
    assert detect_format(tmp_path / "lens").format == "saelens"
    # a file inside the folder stands for the folder
    assert detect_format(tmp_path / "lens" / "cfg.json").path == tmp_path / "lens"
    x = x_rows()
    with torch.no_grad():
        want = sae(x)
        for folder in ("native", "lens"):
            back = load_sae(tmp_path / folder)
            assert (back.cfg.architecture, back.cfg.k, back.cfg.input_norm) == (
                arch,
                sae.cfg.k,
                sae.cfg.input_norm,
            )
            got = back(x)
            assert torch.equal(got.codes != 0, want.codes != 0)
            torch.testing.assert_close(got.codes, want.codes, atol=1e-6, rtol=0)
            torch.testing.assert_close(got.x_hat, want.x_hat, atol=1e-5, rtol=0)
    lens = load_sae(tmp_path / "lens")
    assert lens.cfg.metadata["source_format"] == "saelens"
    assert lens.cfg.metadata["hook_name"] == "blocks.3.hook_resid_post"


def test_saelens_cfg_written_for_sae_lens(tmp_path: Path) -> None:
    cfg = json.loads((export_saelens(native_sae("batchtopk"), tmp_path) / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu"
    assert cfg["metadata"]["training_architecture"] == "batchtopk"
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    topk = json.loads((export_saelens(native_sae("topk"), tmp_path / "t") / "cfg.json").read_text())
    assert (topk["architecture"], topk["k"], topk["rescale_acts_by_decoder_norm"]) == (
        "topk",
        5,
        False,
    )


def test_an_exported_sae_still_says_which_rows_it_reads(tmp_path: Path) -> None:
    """A native SAE trained on an LM store exports its model and hookpoint as SAELens's
    model_name and hook_name (with context_size, prepend_bos), so the copy is refused on
    another hookpoint or model as the original is."""
    from saescope.sae.fit import check_fits_store

    store_meta = {"rows": "tokens", "model": "SmolLM2-135M-Instruct", "hookpoint": "resid_post.6",
                  "ctx_len": 64, "bos": True}  # fmt: skip
    sae = native_sae()
    sae = SAE.from_tensors(
        SAEConfig("topk", D_IN, D_SAE, k=5, metadata={"store_meta": store_meta}),
        sae.state_tensors(),
    )
    meta = json.loads((export_saelens(sae, tmp_path / "lens") / "cfg.json").read_text())["metadata"]
    assert meta["model_name"] == "SmolLM2-135M-Instruct"
    assert meta["hook_name"] == "blocks.6.hook_resid_post"
    assert (meta["context_size"], meta["prepend_bos"]) == (64, True)
    copy = load_sae(tmp_path / "lens")
    check_fits_store(copy, store_meta, D_IN, "lens")  # its own rows
    for other, message in (
        ({"hookpoint": "resid_post.10"}, "hookpoint"),
        ({"model": "HuggingFaceTB/SmolLM2-360M"}, "trained on SmolLM2-135M-Instruct"),
    ):
        with pytest.raises(SaescopeError, match=message):
            check_fits_store(copy, store_meta | other, D_IN, "lens")
    # the hub id of the same model by another owner/path is the same model
    check_fits_store(copy, store_meta | {"model": "/models/SmolLM2-135M-Instruct/"}, D_IN, "x")


def test_not_an_sae(tmp_path: Path) -> None:
    with pytest.raises(SaescopeError, match="does not exist"):
        load_sae(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SaescopeError, match="no SAE found"):
        load_sae(tmp_path)
    with pytest.raises(SaescopeError, match="not an SAE file"):
        load_sae(tmp_path / "notes.txt")


# -- clear errors on bad files ------------------------------------------------------------


def test_saelens_bad_files(tmp_path: Path) -> None:
    good = {
        "W_enc": torch.zeros(D_IN, D_SAE),
        "b_enc": torch.zeros(D_SAE),
        "W_dec": torch.zeros(D_SAE, D_IN),
        "b_dec": torch.zeros(D_IN),
    }
    base = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32"}
    cases = [
        ("shape", base, good | {"W_enc": torch.zeros(D_SAE, D_IN)}, r"W_enc has shape \(30, 12\)"),
        ("ints", base, good | {"b_dec": torch.zeros(D_IN, dtype=torch.int64)}, "b_dec has dtype"),
        (
            "missing",
            base,
            {k: v for k, v in good.items() if k != "b_enc"},
            "lacks the tensor 'b_enc'",
        ),
        ("gated", base | {"architecture": "gated"}, good, "'gated' is not supported"),
        ("extra", base, good | {"b_gate": torch.zeros(D_SAE)}, "b_gate"),
        ("nok", base | {"architecture": "topk"}, good, "needs 'k'"),
        ("dtype", base | {"dtype": "int8"}, good, "unsupported dtype"),
        ("cnr", base | {"normalize_activations": "constant_norm_rescale"}, good, "no exact"),
    ]
    for name, cfg, tensors, message in cases:
        folder = saelens_folder(tmp_path / name, cfg, tensors)
        with pytest.raises(SaescopeError, match=message) as info:
            load_sae(folder)
        assert str(folder) in str(info.value), f"{name}: the error must name the file"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cfg.json").write_text(json.dumps(base))
    (broken / "sae_weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(SaescopeError, match="cannot read .*sae_weights.safetensors"):
        load_sae(broken)


def test_saelens_folds_inputs_exactly(tmp_path: Path) -> None:
    """apply_b_dec_to_input=false and an old per-latent scaling_factor are folded."""
    g = torch.Generator().manual_seed(4)
    W_enc, b_enc = torch.randn(D_IN, D_SAE, generator=g), torch.randn(D_SAE, generator=g)
    W_dec, b_dec = torch.randn(D_SAE, D_IN, generator=g), torch.randn(D_IN, generator=g)
    scale = torch.rand(D_SAE, generator=g) + 0.5
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32"}
    cfg |= {"apply_b_dec_to_input": False, "finetuning_scaling_factor": True}
    tensors = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    folder = saelens_folder(tmp_path / "old", cfg, tensors | {"scaling_factor": scale})
    sae = load_sae(folder)
    x = x_rows()
    codes = torch.relu(x @ W_enc + b_enc)  # no b_dec subtraction
    with torch.no_grad():
        out = sae(x)
    torch.testing.assert_close(out.codes, codes, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.x_hat, (codes * scale) @ W_dec + b_dec, atol=1e-4, rtol=1e-5)
    assert len(sae.cfg.metadata["conversion"]) == 2


def test_sparsify_checkpoint_and_bad_config(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    for hook, extra in (("layers.2", {}), ("layers.5", {"activation": "groupmax"})):
        d = run_dir / hook
        d.mkdir(parents=True)
        cfg = {"d_in": D_IN, "k": 4, "num_latents": D_SAE, "expansion_factor": 32} | extra
        (d / "cfg.json").write_text(json.dumps(cfg))
        save_file(
            {
                "encoder.weight": torch.randn(D_SAE, D_IN),
                "encoder.bias": torch.zeros(D_SAE),
                "W_dec": torch.randn(D_SAE, D_IN),
                "b_dec": torch.zeros(D_IN),
            },
            str(d / "sae.safetensors"),
        )
    with pytest.raises(SaescopeError, match="one SAE per hookpoint"):
        load_sae(run_dir)
    sae = load_sae(run_dir, hookpoint="layers.2")
    assert (sae.cfg.d_sae, sae.cfg.k, sae.cfg.metadata["hook_name"]) == (D_SAE, 4, "layers.2")
    with pytest.raises(SaescopeError, match="groupmax"):
        load_sae(run_dir / "layers.5")
    with pytest.raises(SaescopeError, match="k can only be given"):
        load_sae(run_dir, hookpoint="layers.2", k=3)


def test_saerch_and_batchtopk_repo_bad_files(tmp_path: Path) -> None:
    sd = {
        "encoder.weight": torch.randn(D_SAE, D_IN),
        "decoder.weight": torch.randn(D_IN, D_SAE),
        "pre_bias": torch.zeros(D_IN),
        "latent_bias": torch.zeros(D_SAE),
    }
    torch.save(sd, tmp_path / "astroPH_8_99_256.pth")
    with pytest.raises(SaescopeError, match="n=99"):
        load_sae(tmp_path / "astroPH_8_99_256.pth")
    torch.save(sd | {"decoder.weight": torch.randn(D_SAE, D_IN)}, tmp_path / "a_8_30_1.pth")
    with pytest.raises(SaescopeError, match="decoder.weight has shape"):
        load_sae(tmp_path / "a_8_30_1.pth")
    # pickled code is never run: a non-tensor object is refused by weights_only loading
    torch.save({"W": torch.zeros(2), "fn": print}, tmp_path / "evil_1_2_3.pth")
    with pytest.raises(SaescopeError, match="weights-only"):
        load_sae(tmp_path / "evil_1_2_3.pth")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "config.json").write_text(json.dumps({"sae_type": "gated", "act_size": D_IN}))
    torch.save({}, repo / "sae.pt")
    with pytest.raises(SaescopeError, match="unknown sae_type 'gated'"):
        load_sae(repo)


# -- the convert stage -------------------------------------------------------------------


def test_convert_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = standard_saelens(tmp_path / "lens")
    out = tmp_path / "native"
    assert cli_main(["convert", "--src", str(src), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    record = json.loads((out / "convert.json").read_text())
    assert record["result"]["source_format"] == "saelens"
    assert record["result"]["architecture"] == "relu" and record["status"] == "complete"
    mtime = (out / "sae.safetensors").stat().st_mtime_ns
    # same options, same source: nothing is rewritten
    assert run(ConvertConfig(src=str(src), out=str(out))) == out
    assert (out / "sae.safetensors").stat().st_mtime_ns == mtime
    # other options into the same folder: refused without --overwrite, one line, exit 2
    assert cli_main(["convert", "--src", str(src), "--out", str(out), "--to", "saelens"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    args = ["convert", "--src", str(src), "--out", str(out), "--to", "saelens", "--overwrite"]
    assert cli_main(args) == 0
    assert not (out / "sae.safetensors").exists() and (out / "sae_weights.safetensors").exists()
    x = x_rows()
    with torch.no_grad():
        torch.testing.assert_close(load_sae(out).encode(x), load_sae(src).encode(x))
    # the source changed: the old conversion no longer counts as done
    standard_saelens(src, dtype="float64")
    with pytest.raises(SaescopeError, match="input cfg.json changed since"):
        run(ConvertConfig(src=str(src), out=str(out), to="saelens"))
    assert cli_main(["convert", "--src", str(src), "--out", str(src)]) == 2
    assert "source folder" in capsys.readouterr().err
    assert cli_main(["convert", "--src", str(tmp_path / "nope"), "--out", str(out)]) == 2


def test_saelens_log_threshold(tmp_path: Path) -> None:
    """Older SAELens JumpReLU files keep log(threshold)."""
    g = torch.Generator().manual_seed(6)
    W_enc, b_enc = torch.randn(D_IN, D_SAE, generator=g), torch.randn(D_SAE, generator=g)
    W_dec, b_dec = torch.randn(D_SAE, D_IN, generator=g), torch.randn(D_IN, generator=g)
    log_t = torch.randn(D_SAE, generator=g)
    cfg = {"architecture": "jumprelu", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32"}
    tensors = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    sae = load_sae(saelens_folder(tmp_path / "j", cfg, tensors | {"log_threshold": log_t}))
    x = x_rows()
    h = (x - b_dec) @ W_enc + b_enc
    want = torch.relu(h) * (h > log_t.exp())
    assert (want != 0).any()
    with torch.no_grad():
        got = sae.encode(x)
    assert torch.equal(got != 0, want != 0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_loaded_saes_are_ready_for_inference_and_say_what_input_they_take(
    tmp_path: Path,
) -> None:
    sae = native_sae("topk", input_norm="row_standardize")
    sae.save(tmp_path / "run" / "sae")
    (tmp_path / "run" / "acts").mkdir()
    back = load_sae(tmp_path / "run" / "sae")
    assert not back.training and not any(p.requires_grad for p in back.parameters())
    assert back.cfg.metadata["source_format"] == "saescope"
    x = x_rows(8)
    # numpy rows are taken, and the result is a plain tensor with no graph
    assert torch.equal(back.encode(x.numpy()), back.encode(x))
    assert back.encode(x).numpy().shape == (8, D_SAE)
    with pytest.raises(SaescopeError, match=rf"rows of {D_IN} values.*got shape \(2, 5\)"):
        back.encode(torch.zeros(2, 5))
    # the reconstruction is in the input's space; decode alone is the standardised one
    full = back(x).x_hat
    torch.testing.assert_close(back.reconstruct(x), full)
    assert (back.decode(back.encode(x)) - full).abs().max() > 0.1
    with pytest.raises(SaescopeError, match="unknown device 'tpu'"):
        load_sae(tmp_path / "run" / "sae", device="tpu")
    with pytest.raises(SaescopeError, match="is a run directory, not an SAE"):
        load_sae(tmp_path / "run")


def test_a_cast_sae_is_written_in_its_own_dtype(tmp_path: Path) -> None:
    sae = native_sae("topk").to(torch.float16)
    cfg = json.loads((export_saelens(sae, tmp_path / "lens") / "cfg.json").read_text())
    assert cfg["dtype"] == "float16"
    assert load_sae(tmp_path / "lens").W_enc.dtype == torch.float16
    sae.save(tmp_path / "native")
    assert load_sae(tmp_path / "native").W_enc.dtype == torch.float16
