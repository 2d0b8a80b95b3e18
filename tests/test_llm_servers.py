"""The clients against real models: two real OpenAI-compatible servers and the in-process client.

Both servers serve the packaged SmolLM2 on 127.0.0.1, are started here and
stopped after (also when a test fails), on one thread each:
- `transformers serve` (Hugging Face's server, `transformers[serving]`): the
  chat path, and a server that gives no logprobs;
- llama-cpp-python's server (`make llm-servers` builds it; `.ci/run` does):
  the logprobs path. Skipped, saying why, when llama_cpp is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from saescope.defaults import DEFAULT_LM, smollm2_gguf
from saescope.llm import (
    Budget,
    CachedClient,
    LLMError,
    LLMOptions,
    LLMRequest,
    LocalClient,
    OpenAIClient,
    make_client,
)

QUESTION = LLMRequest(
    messages=(("user", "What is the capital of France? Answer in one word."),),
    max_tokens=8,
    top_logprobs=3,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(cmd: list[str], port: int, log: Path, ready_s: float = 180) -> Iterator[str]:
    """Run the server `cmd` (listening on 127.0.0.1:`port`) until the block ends; yield its base URL."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{cmd[0]} exited ({proc.returncode}):\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url + "/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{cmd[0]} not ready after {ready_s} s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and any children
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def ask_twice(url: str, model: str, cache: Path) -> tuple:
    """QUESTION sent to `url` through the stage client, twice (the second from the cache)."""

    async def go():
        b = make_client(LLMOptions(llm=url, llm_model=model, timeout=60, retries=1), cache)
        try:
            return await b.complete(QUESTION), await b.complete(QUESTION), b
        finally:
            await b.aclose()

    return asyncio.run(go())


def smollm_folder() -> str:
    from saescope.lm.model import resolve_lm

    return resolve_lm(DEFAULT_LM)  # the dequantised safetensors folder in the cache


def test_transformers_serve(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "transformers"
    if not exe.exists() or importlib.util.find_spec("fastapi") is None:
        pytest.skip("`transformers serve` is not installed: pip install 'transformers[serving]'")
    folder = smollm_folder()
    port = free_port()
    cmd = [str(exe), "serve", folder, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    with serving(cmd, port, tmp_path / "server.log") as url:
        first, second, b = ask_twice(url, folder, tmp_path / "cache")
        assert "Paris" in first.text and first.top_logprobs is None  # it gives none: we say so
        assert first.prompt_tokens > 0 and 0 < first.completion_tokens <= 8
        assert second.cached and second.text == first.text
        assert b.sent == 1 and b.usage.cached == 1

        async def wrong_model():  # a 400 from a real server: not retried
            c = OpenAIClient(url, "no-such-model", retries=3)
            try:
                await c.complete(QUESTION)
            finally:
                await c.aclose()
            return c

        with pytest.raises(LLMError) as err:
            asyncio.run(wrong_model())
        assert err.value.kind == "client" and "400" in str(err.value)


def test_llama_cpp_server(tmp_path: Path) -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip(
            "llama-cpp-python is not installed (`make llm-servers` builds it; .ci/run does)"
        )
    gguf = str(smollm2_gguf())
    port = free_port()
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1",
        "--port", str(port), "--n_ctx", "2048", "--n_threads", "1", "--n_threads_batch", "1",
        "--logits_all", "true",
    ]  # fmt: skip
    with serving(cmd, port, tmp_path / "server.log") as url:
        first, second, b = ask_twice(url, "smollm2", tmp_path / "cache")
        assert "Paris" in first.text and first.finish_reason in ("stop", "length")
        top = first.top_logprobs
        assert top is not None and len(top) == first.completion_tokens
        for step in top:
            assert 1 <= len(step) <= 3 and all(lp <= 1e-6 for lp in step.values())
        assert any("Paris" in tok for step in top for tok in step)
        # the cache keeps the logprobs with the answer
        assert second.cached and second.top_logprobs == top and b.sent == 1


@pytest.fixture(scope="module")
def local() -> Iterator[LocalClient]:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield LocalClient()
    finally:
        torch.set_num_threads(old)


def test_local_client_greedy_with_logprobs(local: LocalClient, tmp_path: Path) -> None:
    async def go():
        b = Budget(CachedClient(local, tmp_path))
        plain = LLMRequest(messages=QUESTION.messages, max_tokens=8)
        return await asyncio.gather(b.complete(QUESTION), b.complete(plain))

    with_lp, without = asyncio.run(go())  # two at once: the lock takes them in turn
    assert "Paris" in with_lp.text and with_lp.text == without.text  # greedy: the same answer
    assert without.top_logprobs is None and with_lp.model == DEFAULT_LM
    top = with_lp.top_logprobs
    assert top is not None and len(top) == with_lp.completion_tokens
    assert with_lp.prompt_tokens == len(local.tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION.messages[0][1]}], add_generation_prompt=True,
        tokenize=True, return_dict=True)["input_ids"])  # fmt: skip
    # greedy: each generated token is its step's most likely one
    best = [max(step, key=step.__getitem__) for step in top]
    special = set(local.tokenizer.all_special_tokens)
    assert "".join(t for t in best if t not in special) == with_lp.text
    for step in top:
        assert len(step) == 3 and math.fsum(math.exp(v) for v in step.values()) <= 1 + 1e-5


def test_token_losses_match_a_manual_computation(local: LocalClient) -> None:
    import torch

    prefix = "Words about the weather:"
    texts = ["It rained all day in Paris.", "Sunny", "The stock market fell sharply on Monday."]
    got = local.token_losses(prefix, texts, batch_size=2)  # one padded batch and one alone
    lm = local._load()
    tok = lm.tokenizer
    want = []
    for text in texts:
        ctx = [tok.bos_token_id] + tok(prefix, add_special_tokens=False)["input_ids"]
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = lm.model(torch.tensor([ctx + ids])).logits[0]  # (n, vocab)
        logp = torch.log_softmax(logits, -1)
        nll = [-logp[len(ctx) + i - 1, t].item() for i, t in enumerate(ids)]
        want.append(sum(nll) / len(nll))
    assert got == pytest.approx(want, abs=1e-4)
    alone = local.token_losses("", texts[:1])[0]
    assert math.isfinite(alone) and alone != pytest.approx(got[0], abs=1e-3)
    assert math.isnan(local.token_losses(prefix, [""])[0])
