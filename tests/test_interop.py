"""Foreign SAE files give their home library's codes when loaded with saescope.

SAELens (6.54) and sparsify (1.3) are the real installed packages: tiny SAEs are
trained a few steps with their own training code, saved with their own save code,
and encoded with their own `encode`. Seed 004 (saerch) and the BatchTopK repo are
not packages, so a small reference of their inference (from shared/FORMATS.md) is
written here and their files are made in their layout with `torch.save`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import random_sae_weights, run_cli
from torch import nn

from saescope import export_saelens, load_sae
from saescope.errors import SaescopeError, SaescopeWarning
from saescope.sae import SAE, SAEConfig

sae_lens = pytest.importorskip("sae_lens")
sparsify = pytest.importorskip("sparsify")

D_IN, D_SAE, K, BATCH = 16, 48, 4, 64


def inputs(n_rows: int = 200, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_rows, D_IN, generator=g) * 1.5 + 0.7  # (n_rows, d_in), off-centre


def assert_same_codes(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """Same active latents exactly, values within 1e-5; and the codes are not all zero."""
    ref = ref.detach().to(torch.float32)
    ours = ours.detach().to(torch.float32)
    assert (ref != 0).sum() > ref.shape[0], "reference codes are (almost) all zero"
    assert torch.equal(ours != 0, ref != 0), f"{int(((ours != 0) ^ (ref != 0)).sum())} differ"
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


# -- SAELens -----------------------------------------------------------------------


class RandomActs:
    """An endless iterator of random activation batches, SAELens' data_provider."""

    def __init__(self, seed: int = 0) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def __iter__(self) -> RandomActs:
        return self

    def __next__(self) -> torch.Tensor:
        return torch.randn(BATCH, D_IN, generator=self.g) * 1.5 + 0.7


def train_saelens(arch: str, ckpt: Path, steps: int = 12, n_checkpoints: int = 0, **cfg_kw):
    """A few SAETrainer steps; the final checkpoint goes to ckpt/final_*, inference to ckpt/inf."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.registry import get_sae_training_class
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    sae_cls, cfg_cls = get_sae_training_class(arch)
    extra = {"k": K} if arch in ("topk", "batchtopk") else {}
    sae = sae_cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, **extra, **cfg_kw))
    trainer_cfg = SAETrainerConfig(
        total_training_samples=BATCH * steps,
        train_batch_size_samples=BATCH,
        lr=3e-3,
        lr_end=3e-3,
        n_checkpoints=n_checkpoints,
        checkpoint_path=str(ckpt),
        save_final_checkpoint=True,
        n_batches_for_norm_estimate=4,
        logger=LoggingConfig(log_to_wandb=False),
    )
    SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=RandomActs()).fit()
    sae.save_inference_model(str(ckpt / "inf"))
    (final,) = ckpt.glob("final_*")
    return sae, final, ckpt / "inf"


def saelens_encode(folder: Path, x: torch.Tensor, training: bool = False) -> torch.Tensor:
    from sae_lens import SAE as LensSAE
    from sae_lens.saes.sae import TrainingSAE

    cls = TrainingSAE if training else LensSAE
    with torch.no_grad():
        return cls.load_from_disk(str(folder)).encode(x)


@pytest.mark.parametrize(
    ("arch", "cfg_kw"),
    [
        ("standard", {}),
        ("standard", {"apply_b_dec_to_input": False}),
        ("topk", {}),  # rescale_acts_by_decoder_norm=True by default: unfolded in checkpoints
        ("topk", {"rescale_acts_by_decoder_norm": False, "apply_b_dec_to_input": False}),
        ("jumprelu", {"jumprelu_init_threshold": 0.3}),
        ("jumprelu", {"normalize_activations": "layer_norm"}),
    ],
)
def test_saelens_trained_files(tmp_path: Path, arch: str, cfg_kw: dict) -> None:
    _, final, inf = train_saelens(arch, tmp_path, **cfg_kw)
    x = inputs()
    for folder, training in ((inf, False), (final, True)):
        sae = load_sae(folder)
        assert sae.cfg.metadata["source_format"] == "saelens"
        assert sae.cfg.architecture == {"standard": "relu"}.get(arch, arch)
        assert_same_codes(sae.encode(x), saelens_encode(folder, x, training))
    # reconstruction too (inference file, SAELens' own decode)
    from sae_lens import SAE as LensSAE

    lens = LensSAE.load_from_disk(str(inf))
    with torch.no_grad():
        torch.testing.assert_close(load_sae(inf)(x).x_hat, lens(x), atol=1e-4, rtol=1e-4)


def test_saelens_batchtopk_saved_as_jumprelu(tmp_path: Path) -> None:
    _, final, inf = train_saelens("batchtopk", tmp_path)
    cfg = json.loads((inf / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu"
    x = inputs()
    from_inf, from_ckpt = load_sae(inf), load_sae(final)
    # the inference file (jumprelu, constant threshold) and the training checkpoint
    # (architecture batchtopk, scalar topk_threshold, unfolded decoder norms) agree
    assert from_inf.cfg.architecture == from_ckpt.cfg.architecture == "batchtopk"
    assert from_inf.cfg.k == K
    assert_same_codes(from_inf.encode(x), saelens_encode(inf, x))
    assert_same_codes(from_ckpt.encode(x), saelens_encode(inf, x))


@pytest.mark.parametrize("norm", ["expected_average_only_in", "covariance_whitening"])
def test_saelens_checkpoint_with_activation_scaler(tmp_path: Path, norm: str) -> None:
    """A mid-training checkpoint keeps the normaliser beside the weights: it is folded."""
    from sae_lens.training.activation_scaler import ActivationScaler

    _, final, _ = train_saelens("topk", tmp_path, n_checkpoints=1, normalize_activations=norm)
    (mid,) = [p for p in tmp_path.iterdir() if p.name.isdigit()]
    scaler = ActivationScaler()
    scaler.load(mid / "activation_scaler.json")
    x = inputs()
    sae = load_sae(mid)
    assert any("folded" in n for n in sae.cfg.metadata["conversion"])
    # SAELens' trainer feeds scaler(x) to the SAE: folded, saescope takes the raw x
    assert_same_codes(sae.encode(x), saelens_encode(mid, scaler(x), training=True))
    # the final checkpoint has the normaliser folded by SAELens itself
    assert_same_codes(load_sae(final).encode(x), saelens_encode(final, x, training=True))
    # without the scaler file the normaliser cannot be applied: a clear error
    (mid / "activation_scaler.json").unlink()
    (mid / "activation_whitening.safetensors").unlink(missing_ok=True)
    with pytest.raises(SaescopeError, match="normalize_activations"):
        load_sae(mid)


@pytest.mark.parametrize(
    ("arch", "input_norm"),
    [
        ("relu", "none"),
        ("topk", "none"),
        ("jumprelu", "row_standardize"),
        ("batchtopk", "none"),
        # what input_norm auto gives the batch-wide rules on rows of unequal norm
        ("batchtopk", "row_standardize"),
        ("matryoshka_batchtopk", "row_standardize"),
    ],
)
def test_export_loads_in_saelens(tmp_path: Path, arch: str, input_norm: str) -> None:
    g = torch.Generator().manual_seed(3)
    uses_k = arch in ("topk", "batchtopk", "matryoshka_batchtopk")
    cfg = SAEConfig(arch, D_IN, D_SAE, k=K if uses_k else None, input_norm=input_norm)
    ours = SAE.from_tensors(cfg, random_sae_weights(g, arch, D_IN, D_SAE, 0.3, 0.4))
    out = export_saelens(ours, tmp_path / "export")
    x = inputs()
    with torch.no_grad():
        assert_same_codes(ours.encode(x), saelens_encode(out, x))
        back = load_sae(out)
        assert back.cfg.architecture == arch and back.cfg.input_norm == input_norm
        assert_same_codes(back.encode(x), ours.encode(x))


# -- sparsify ----------------------------------------------------------------------


def train_sparsify(folder: Path, num_latents: int, expansion_factor: int) -> None:
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(0)
    cfg = SparseCoderConfig(k=K, num_latents=num_latents, expansion_factor=expansion_factor)
    coder = SparseCoder(D_IN, cfg)
    opt = torch.optim.Adam(coder.parameters(), lr=3e-3)
    data = RandomActs()
    for _ in range(12):
        out = coder(next(data))
        out.fvu.backward()
        opt.step()
        opt.zero_grad()
    coder.save_to_disk(folder)


def sparsify_codes(folder: Path, x: torch.Tensor) -> torch.Tensor:
    from sparsify import SparseCoder

    coder = SparseCoder.load_from_disk(folder)
    with torch.no_grad():
        top_acts, top_idx, _ = coder.encode(x)
    return torch.zeros(x.shape[0], coder.num_latents).scatter_(-1, top_idx, top_acts)


def test_sparsify_files_and_checkpoint_folder(tmp_path: Path) -> None:
    ckpt = tmp_path / "run"
    train_sparsify(ckpt / "layers.0", num_latents=40, expansion_factor=8)  # num_latents wins
    train_sparsify(ckpt / "layers.1.mlp", num_latents=0, expansion_factor=2)
    (ckpt / "config.json").write_text("{}")  # the trainer's run config sits at the top
    x = inputs()
    with pytest.raises(SaescopeError, match=r"layers\.0, layers\.1\.mlp"):
        load_sae(ckpt)
    a = load_sae(ckpt, hookpoint="layers.0")
    b = load_sae(ckpt / "layers.1.mlp")
    assert (a.cfg.d_sae, b.cfg.d_sae) == (40, 2 * D_IN)
    assert a.cfg.metadata["source_format"] == "sparsify"
    assert_same_codes(a.encode(x), sparsify_codes(ckpt / "layers.0", x))
    assert_same_codes(b.encode(x), sparsify_codes(ckpt / "layers.1.mlp", x))


# -- seed 004 (saerch) ----------------------------------------------------------------


class SaerchRef(nn.Module):
    """Seed 004's TopK SAE: top-k of pre-activations, then relu; pre_bias around both ends."""

    def __init__(self, d_in: int, n: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.pre_bias = nn.Parameter(torch.randn(d_in) * 0.3)
        self.encoder = nn.Linear(d_in, n, bias=False)
        self.decoder = nn.Linear(n, d_in, bias=False)  # weight (d_in, n): columns are atoms
        self.latent_bias = nn.Parameter(torch.randn(n) * 0.2 - 0.6)
        self.register_buffer("stats_last_nonzero", torch.zeros(n, dtype=torch.long))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.encoder(x - self.pre_bias) + self.latent_bias  # (n_rows, n)
        top = torch.topk(pre, self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, F.relu(top.values))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z) + self.pre_bias


def test_saerch_pth(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = SaerchRef(D_IN, D_SAE, k=8)
    path = tmp_path / "csLG_8_48_256.pth"
    torch.save(ref.state_dict(), path)
    x = inputs()
    sae = load_sae(path)
    assert (sae.cfg.k, sae.cfg.d_sae, sae.cfg.metadata["domain"]) == (8, D_SAE, "csLG")
    with torch.no_grad():
        want = ref.encode(x)
        assert ((want != 0).sum(-1) < 8).any(), "want rows with fewer than k non-zeros"
        assert_same_codes(sae.encode(x), want)
        torch.testing.assert_close(sae(x).x_hat, ref.decode(want), atol=1e-5, rtol=1e-5)
    # a file whose name does not carry k needs k from the caller
    plain = tmp_path / "model.pth"
    torch.save(ref.state_dict(), plain)
    with pytest.raises(SaescopeError, match="pass k"):
        load_sae(plain)
    assert_same_codes(load_sae(plain, k=8).encode(x), want)
    # a name that carries k takes the same k, and refuses another (its codes would not be
    # saerch's)
    assert load_sae(path, k=8).cfg.k == 8
    with pytest.raises(SaescopeError, match="the file name says k=8"):
        load_sae(path, k=16)


# -- BatchTopK repo --------------------------------------------------------------------


class BatchTopKRepoRef(nn.Module):
    """The BatchTopK repo's SAEs (vanilla, topk, batchtopk, jumprelu) at inference."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.cfg = cfg
        d_in, d_sae = cfg["act_size"], cfg["dict_size"]
        self.b_dec = nn.Parameter(torch.randn(d_in) * 0.3)
        self.b_enc = nn.Parameter(torch.randn(d_sae) * 0.2)
        self.W_enc = nn.Parameter(torch.randn(d_in, d_sae) * 0.3)
        self.W_dec = nn.Parameter(torch.randn(d_sae, d_in) * 0.3)
        if cfg["sae_type"] == "jumprelu":
            self.jumprelu = nn.Module()
            self.jumprelu.log_threshold = nn.Parameter(torch.randn(d_sae) * 0.5 - 1.0)

    def preprocess(self, x: torch.Tensor):
        if not self.cfg.get("input_unit_norm"):
            return x, None, None
        mean = x.mean(dim=-1, keepdim=True)
        x = x - mean
        std = x.std(dim=-1, keepdim=True)
        return x / (std + 1e-5), mean, std

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x, _, _ = self.preprocess(x)
        kind = self.cfg["sae_type"]
        if kind == "jumprelu":  # no b_dec subtraction
            pre = torch.relu(x @ self.W_enc + self.b_enc)
            return pre * (pre > torch.exp(self.jumprelu.log_threshold))
        acts = F.relu((x - self.b_dec) @ self.W_enc + (self.b_enc if kind == "vanilla" else 0))
        if kind == "vanilla":
            return acts
        top = torch.topk(acts, self.cfg["top_k"], dim=-1)  # batchtopk at inference: per row
        return torch.zeros_like(acts).scatter(-1, top.indices, top.values)


@pytest.mark.parametrize(
    ("sae_type", "unit_norm"),
    [("vanilla", False), ("topk", True), ("batchtopk", False), ("jumprelu", True)],
)
def test_batchtopk_repo(tmp_path: Path, sae_type: str, unit_norm: bool) -> None:
    torch.manual_seed(0)
    cfg = {
        "sae_type": sae_type,
        "act_size": D_IN,
        "dict_size": D_SAE,
        "top_k": K,  # present in real jumprelu configs too, and unused there
        "input_unit_norm": unit_norm,
        "bandwidth": 0.001,
        "dtype": "torch.float32",
        "device": "cuda",  # real configs name the training device; ignored
        "l1_coeff": 0.0,
    }
    ref = BatchTopKRepoRef(cfg)
    folder = tmp_path / "artifact"
    folder.mkdir()
    torch.save(ref.state_dict(), folder / "sae.pt")
    (folder / "config.json").write_text(json.dumps(cfg))
    if sae_type == "batchtopk":
        with pytest.warns(SaescopeWarning, match="per-row topk"):
            sae = load_sae(folder)
        # the command line says it in one line, not with Python's source line
        err = run_cli("convert", "--src", str(folder), "--out", str(tmp_path / "n")).stderr
        warned = [x for x in err.splitlines() if x.startswith("saescope convert: warning:")]
        assert len(warned) == 1 and "per-row topk" in warned[0] and "warnings.warn" not in err
    else:
        sae = load_sae(folder)
    assert sae.cfg.metadata["source_format"] == "batchtopk_repo"
    assert sae.cfg.input_norm == ("row_standardize" if unit_norm else "none")
    x = inputs()
    with torch.no_grad():
        assert_same_codes(sae.encode(x), ref.encode(x))


def test_saelens_pre_6_config(tmp_path: Path) -> None:
    """A SAELens 3-5 style cfg (activation_fn topk, boolean normalize) loads like SAELens does."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(5)
    folder = tmp_path / "old"
    folder.mkdir()
    cfg = {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "torch.float32",
        "device": "cuda",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": K},
        "normalize_activations": False,
        "hook_point": "blocks.2.hook_resid_pre",
        "model_name": "gpt2",
        "sae_lens_training_version": "3.13.0",
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    tensors = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g),
        "b_enc": torch.randn(D_SAE, generator=g) * 0.1,
        "W_dec": torch.randn(D_SAE, D_IN, generator=g),
        "b_dec": torch.randn(D_IN, generator=g) * 0.1,
    }
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    from sae_lens import SAE as LensSAE

    x = inputs()
    with torch.no_grad():
        want = LensSAE.load_from_disk(str(folder), device="cpu").encode(x)
    sae = load_sae(folder)
    assert (sae.cfg.architecture, sae.cfg.k) == ("topk", K)
    assert_same_codes(sae.encode(x), want)


def test_convert_sparsify_to_saelens_chain(tmp_path: Path) -> None:
    """sparsify file -> `saescope convert --to saelens` -> SAELens' encode = sparsify's."""
    from saescope.cli import main as cli_main

    train_sparsify(tmp_path / "ckpt" / "layers.4", num_latents=40, expansion_factor=8)
    out = tmp_path / "lens"
    args = ["convert", "--src", str(tmp_path / "ckpt"), "--hookpoint", "layers.4"]
    assert cli_main([*args, "--out", str(out), "--to", "saelens"]) == 0
    x = inputs()
    assert_same_codes(saelens_encode(out, x), sparsify_codes(tmp_path / "ckpt" / "layers.4", x))


def test_convert_saelens_topk_to_sparsify_chain(tmp_path: Path) -> None:
    """A SAELens-trained TopK SAE -> `saescope convert --to sparsify` -> sparsify's own
    load_from_disk and encode give SAELens' codes, and its decode the same x_hat."""
    from sae_lens import SAE as LensSAE
    from sparsify import SparseCoder

    from saescope.cli import main as cli_main

    _, _, inf = train_saelens("topk", tmp_path / "lens")
    out = tmp_path / "sparsify"
    assert cli_main(["convert", "--src", str(inf), "--out", str(out), "--to", "sparsify"]) == 0
    x = inputs()
    assert_same_codes(sparsify_codes(out, x), saelens_encode(inf, x))
    coder = SparseCoder.load_from_disk(out)
    with torch.no_grad():
        torch.testing.assert_close(
            coder(x).sae_out, LensSAE.load_from_disk(str(inf))(x), atol=1e-4, rtol=1e-4
        )
    # and back: saescope reads what it wrote as the sparsify format it is
    assert load_sae(out).cfg.metadata["source_format"] == "sparsify"
    assert_same_codes(load_sae(out).encode(x), sparsify_codes(out, x))


@pytest.mark.parametrize(
    ("arch", "input_norm", "message"),
    [
        ("batchtopk", "none", "a batchtopk SAE encodes by another rule"),
        ("jumprelu", "none", "a jumprelu SAE encodes by another rule"),
        ("relu", "none", "a relu SAE encodes by another rule"),
        ("topk", "row_standardize", "standardises each row before encoding"),
    ],
)
def test_sae_sparsify_cannot_run_is_refused(
    tmp_path: Path, arch: str, input_norm: str, message: str
) -> None:
    from saescope.convert import ConvertConfig, run

    g = torch.Generator().manual_seed(0)
    k = K if arch in ("topk", "batchtopk") else None
    cfg = SAEConfig(arch, D_IN, D_SAE, k=k, input_norm=input_norm)
    SAE.from_tensors(cfg, random_sae_weights(g, arch, D_IN, D_SAE, 0.4, 0.2)).save(tmp_path / "s")
    out = tmp_path / "out"
    with pytest.raises(SaescopeError, match=message):
        run(ConvertConfig(src=str(tmp_path / "s"), out=str(out), to="sparsify"))
    assert not out.exists() or not any(out.iterdir())  # refused before --out changed


def test_batchtopk_repo_fork_with_threshold(tmp_path: Path) -> None:
    """Forks keep a learned scalar `threshold` buffer: eval codes are relu(h) where > it."""
    import warnings

    torch.manual_seed(0)
    cfg = {"sae_type": "batchtopk", "act_size": D_IN, "dict_size": D_SAE, "top_k": K}
    cfg |= {"input_unit_norm": False, "dtype": "torch.float32", "device": "cuda"}
    ref = BatchTopKRepoRef(cfg)
    state = ref.state_dict() | {
        "threshold": torch.tensor(0.8),
        "num_batches_not_active": torch.zeros(D_SAE),
    }
    folder = tmp_path / "fork"
    folder.mkdir()
    torch.save(state, folder / "sae.pt")
    (folder / "config.json").write_text(json.dumps(cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no per-row topk fallback warning here
        sae = load_sae(folder)
    assert (sae.cfg.architecture, sae.cfg.k) == ("batchtopk", K)
    x = inputs()
    with torch.no_grad():
        acts = F.relu((x - ref.b_dec) @ ref.W_enc)
        assert_same_codes(sae.encode(x), torch.where(acts > 0.8, acts, torch.zeros_like(acts)))
