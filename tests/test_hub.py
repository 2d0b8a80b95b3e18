"""SAEs named on the Hugging Face hub (`hf:OWNER/REPO[@REVISION][/PATH]`), read from a
local copy: a hub cache laid out as huggingface_hub lays it out, with the hub offline
(as on a machine that fetched them earlier), so the real snapshot_download runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from test_formats import native_sae, x_rows

from saescope import SaescopeError, load_sae
from saescope.paths import RunPaths
from saescope.sae import detect_format, export_saelens

MAIN, V1 = "a" * 40, "b" * 40
HOOK = "blocks.3.hook_resid_post"


def _put(cache: Path, repo_id: str, files: dict[str, Path], revision: str, commit: str) -> None:
    """Files (path in the repository -> local file) as a cached snapshot of `revision`."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    for name, src in files.items():
        dest = repo / "snapshots" / commit / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)


def _folder_files(folder: Path, under: str) -> dict[str, Path]:
    return {f"{under}/{p.name}" if under else p.name: p for p in folder.iterdir()}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    """A hub cache holding acme/saes (two SAELens folders; at v1 another SAE) and
    acme/one (one SAE at the top level)."""
    from huggingface_hub import constants

    root = tmp_path / "hub"
    lens = export_saelens(native_sae("topk", seed=0), tmp_path / "lens0")
    other = export_saelens(native_sae("jumprelu", seed=1), tmp_path / "lens1")
    _put(root, "acme/saes", _folder_files(lens, HOOK), "main", MAIN)
    _put(root, "acme/saes", _folder_files(other, "blocks.5.hook_resid_post"), "main", MAIN)
    _put(root, "acme/saes", _folder_files(other, HOOK), "v1", V1)
    _put(root, "acme/one", _folder_files(lens, ""), "main", MAIN)
    # a training folder pushed whole: its run's config.json on top, an SAE per hookpoint
    (tmp_path / "config.json").write_text("{}")
    _put(root, "acme/ckpt", {"config.json": tmp_path / "config.json"}, "main", MAIN)
    for hookpoint in ("layers.0", "layers.1"):
        _put(root, "acme/ckpt", _folder_files(lens, hookpoint), "main", MAIN)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return root


def _codes(sae) -> torch.Tensor:
    with torch.no_grad():
        return sae.encode(x_rows())


def test_a_hub_name_loads_the_sae_its_path_names(cache: Path, tmp_path: Path) -> None:
    local = _codes(load_sae(tmp_path / "lens0"))
    for name in (f"hf:acme/saes/{HOOK}", "hf:acme/one", f"hf://acme/saes@main/{HOOK}"):
        sae = load_sae(name)
        assert sae.cfg.metadata["source_format"] == "saelens"
        assert torch.equal(_codes(sae), local), name
    # the same path at a tag is the SAE of that commit
    at_v1 = load_sae(f"hf:acme/saes@v1/{HOOK}")
    assert torch.equal(_codes(at_v1), _codes(load_sae(tmp_path / "lens1")))
    assert not torch.equal(_codes(at_v1), local)
    # a hookpoint names the folder, as for a local checkpoint; what Path() makes of a name
    assert torch.equal(_codes(load_sae("hf:acme/saes", hookpoint=HOOK)), local)
    assert detect_format(Path(f"hf:acme/saes/{HOOK}")).format == "saelens"
    assert RunPaths(tmp_path).sae_folder(f"hf:acme/saes/{HOOK}") == Path(f"hf:acme/saes/{HOOK}")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("hf:acme/saes", "holds one SAE per folder \\(blocks.3.hook_resid_post, blocks.5"),
        ("hf:acme/ckpt", "holds one SAE per folder \\(layers.0, layers.1\\); name one"),
        ("hf:acme/saes/blocks.9", "has no file or folder 'blocks.9' in the local cache"),
        ("hf:acme/bad repo!/x", "cannot fetch hf:acme/bad repo!/x"),
        ("hf:acme/gone/x", "not in the local Hugging Face cache"),
        ("hf:acme/saes@v2/x", "not in the local Hugging Face cache"),
        ("hf:acme", "does not name a hub repository"),
        ("hf:acme/saes/../one", "cannot hold '..'"),
    ],
)
def test_hub_names_that_hold_no_one_sae_are_refused(cache: Path, name: str, message: str) -> None:
    with pytest.raises(SaescopeError, match=message):
        load_sae(name)


def test_convert_from_the_hub_and_eval_asks_for_it(cache: Path, tmp_path: Path) -> None:
    """As a user runs it: a fresh process with the cache in HF_HUB_CACHE, offline."""
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "run" / "sae-hub"
    run_cli("convert", "--src", "hf:acme/saes", "--hookpoint", HOOK, "--out", str(out), env=env)
    assert torch.equal(_codes(load_sae(out)), _codes(load_sae(tmp_path / "lens0")))
    record = json.loads((out / "convert.json").read_text())
    assert record["config"]["src"] == "hf:acme/saes"
    # eval would write its metrics into the hub cache: it names the conversion instead
    proc = run_cli("eval", "--run", str(tmp_path / "run"), "--sae", f"hf:acme/saes/{HOOK}",
                   check=False, env=env)  # fmt: skip
    assert proc.returncode == 2
    assert f"saescope convert --src hf:acme/saes/{HOOK} --out" in proc.stderr
    assert not list(cache.rglob("metrics.json"))
