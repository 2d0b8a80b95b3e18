"""The LLM client layer against a real HTTP server on loopback that injects faults (tests/fault_server.py).

Nothing is mocked: requests go through the `openai` package and httpx to a
uvicorn server; the server counts what it received.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from fault_server import WRONG_ANSWER, FaultServer

from saescope.config import add_config_args, config_from_args, option
from saescope.errors import SaescopeError
from saescope.llm import (
    LLM_RUNTIME_FIELDS,
    Budget,
    BudgetExceeded,
    CachedClient,
    LLMError,
    LLMOptions,
    LLMRequest,
    LocalClient,
    OpenAIClient,
    llm_options,
    make_client,
    prompt_tokens,
    unwrap,
)
from saescope.llm.retry import RetryPolicy, parse_retry_after

SECRET = "sk-test-0123456789-do-not-write-me"


@pytest.fixture(scope="module")
def server():
    srv = FaultServer().start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def fault(server: FaultServer, monkeypatch: pytest.MonkeyPatch) -> FaultServer:
    server.reset()
    monkeypatch.setenv("SAESCOPE_TEST_KEY", SECRET)
    return server


def ask(text: str = "hello", **kw) -> LLMRequest:
    return LLMRequest(messages=(("system", "Answer briefly."), ("user", text)), **kw)


def client(fault: FaultServer, **kw) -> OpenAIClient:
    opts = {"api_key_env": "SAESCOPE_TEST_KEY", "timeout": 5.0, "retries": 5, "backoff": 0.01}
    return OpenAIClient(fault.url, "fault-model", **(opts | kw))


def run(coro_fn):
    """Run `coro_fn()` on a fresh event loop (a client lives and closes inside it)."""
    return asyncio.run(coro_fn())


def complete(fault: FaultServer, request: LLMRequest, **kw):
    async def go():
        c = client(fault, **kw)
        try:
            return await c.complete(request), c
        finally:
            await c.aclose()

    return run(go)


def test_answer_logprobs_and_key(fault: FaultServer) -> None:
    r, c = complete(fault, ask("hi there", top_logprobs=3))
    assert r.text == "echo: hi there" and r.finish_reason == "stop" and not r.cached
    assert (r.prompt_tokens, r.completion_tokens) == (10, 3)
    assert r.top_logprobs == [
        {"echo:": -0.1, " maybe": -1.5, " no": -2.5},
        {" hi": -0.1, " maybe": -1.5, " no": -2.5},
        {" there": -0.1, " maybe": -1.5, " no": -2.5},
    ]
    assert fault.bodies[0]["logprobs"] is True and fault.bodies[0]["top_logprobs"] == 3
    assert fault.bodies[0]["temperature"] == 0.0 and fault.bodies[0]["max_tokens"] == 256
    assert fault.auth == [f"Bearer {SECRET}"]
    assert SECRET not in repr(c)

    r, _ = complete(fault, ask("no logprobs"))
    assert r.top_logprobs is None and "logprobs" not in fault.bodies[1]


def test_faults_are_retried_until_an_answer(fault: FaultServer) -> None:
    fault.play("500", "503", "malformed", "empty", "429:0")
    r, c = complete(fault, ask("after the storm"))
    assert r.text == "echo: after the storm"
    assert fault.requests == 6 and c.attempts == 6 and c.retried == 5


@pytest.mark.parametrize(
    ("step", "kind"),
    [
        ("500", "server"),
        ("429:0", "rate_limit"),
        ("malformed", "format"),
        ("empty", "format"),
        ("hang:3", "timeout"),
    ],
)
def test_failure_kind_after_retries_are_spent(fault: FaultServer, step: str, kind: str) -> None:
    fault.play(*[step] * 3)
    with pytest.raises(LLMError) as err:
        complete(fault, ask(), retries=2, timeout=0.4)
    assert err.value.kind == kind
    assert fault.requests == 3  # the first attempt and two retries, no more


@pytest.mark.parametrize("status", ["400", "401", "404", "422"])
def test_client_errors_are_not_retried(fault: FaultServer, status: str) -> None:
    fault.play(status, status)
    with pytest.raises(LLMError) as err:
        complete(fault, ask())
    assert err.value.kind == "client" and status in str(err.value)
    assert fault.requests == 1


def test_a_key_the_server_echoes_is_redacted(fault: FaultServer) -> None:
    fault.play("401-echo")
    with pytest.raises(LLMError) as err:
        complete(fault, ask())
    assert err.value.kind == "client" and "invalid key Bearer ***" in str(err.value)
    assert SECRET not in str(err.value) and fault.requests == 1


def test_timeout_then_answer(fault: FaultServer) -> None:
    fault.play("hang:3")
    start = time.monotonic()
    r, c = complete(fault, ask("slow"), timeout=0.5)
    assert r.text == "echo: slow" and fault.requests == 2 and c.retried == 1
    assert 0.5 <= time.monotonic() - start < 2.5


def test_connection_refused(fault: FaultServer) -> None:
    with socket_closed_port() as port:

        async def go():
            c = OpenAIClient(f"http://127.0.0.1:{port}/v1", "m", retries=2, backoff=0.01)
            try:
                return await c.complete(ask())
            finally:
                await c.aclose()

        with pytest.raises(LLMError) as err:
            run(go)
    assert err.value.kind == "connection" and "3 attempts" in str(err.value)


def socket_closed_port():
    import contextlib
    import socket

    @contextlib.contextmanager
    def cm():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        try:
            yield s.getsockname()[1]
        finally:
            s.close()

    return cm()


def test_retry_after_seconds_is_honoured(fault: FaultServer) -> None:
    fault.play("429:1.2")
    start = time.monotonic()
    r, _ = complete(fault, ask())
    elapsed = time.monotonic() - start
    assert r.text == "echo: hello" and fault.requests == 2
    assert 1.2 <= elapsed < 3.0  # the backoff alone would have waited 0.01 s


def test_retry_after_http_date_is_honoured(fault: FaultServer) -> None:
    fault.play("429-date:2")
    start = time.monotonic()
    complete(fault, ask())
    elapsed = time.monotonic() - start
    assert fault.requests == 2
    assert 0.9 <= elapsed < 3.5  # an HTTP date has whole seconds: 1-2 s ahead


def test_retry_after_is_capped(fault: FaultServer) -> None:
    fault.play("429:3600")
    start = time.monotonic()
    complete(fault, ask(), max_retry_after=0.3)
    assert fault.requests == 2 and time.monotonic() - start < 2.0


def test_truncated_and_wrong_answers_are_returned_not_retried(fault: FaultServer) -> None:
    fault.play("length", "wrong")
    r, _ = complete(fault, ask())
    assert r.finish_reason == "length" and r.text.endswith("about")
    r, _ = complete(fault, ask())
    assert r.text == WRONG_ANSWER and r.finish_reason == "stop"
    assert fault.requests == 2  # judging the content is the explainer's and scorer's job


def test_concurrency_bound(fault: FaultServer) -> None:
    fault.ok_delay = 0.2

    async def go():
        c = client(fault, concurrency=3)
        try:
            return await asyncio.gather(*(c.complete(ask(f"q{i}")) for i in range(12)))
        finally:
            await c.aclose()

    start = time.monotonic()
    answers = run(go)
    assert [a.text for a in answers] == [f"echo: q{i}" for i in range(12)]
    assert fault.requests == 12 and fault.max_in_flight == 3
    assert time.monotonic() - start >= 4 * 0.2  # 12 requests, 3 at a time


def through(fault: FaultServer, wrap, requests: list[LLMRequest], **kw):
    """Send `requests` in order through `wrap(OpenAIClient)`; (responses or errors, wrapper)."""

    async def go():
        c = wrap(client(fault, **kw))
        out = []
        try:
            for r in requests:
                try:
                    out.append(await c.complete(r))
                except LLMError as exc:
                    out.append(exc)
        finally:
            await c.aclose()
        return out, c

    return run(go)


def test_cache_second_run_sends_nothing(fault: FaultServer, tmp_path: Path) -> None:
    requests = [ask(f"q{i}") for i in range(3)] + [ask("q0", temperature=0.5)]
    first, c1 = through(fault, lambda c: CachedClient(c, tmp_path / "cache"), requests)
    assert fault.requests == 4 and c1.misses == 4 and not any(r.cached for r in first)
    second, c2 = through(fault, lambda c: CachedClient(c, tmp_path / "cache"), requests)
    assert fault.requests == 4 and c2.hits == 4  # nothing sent
    assert all(r.cached for r in second)
    assert [r.text for r in second] == [r.text for r in first]
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 4 and all(len(n) == 64 + 5 and n.endswith(".json") for n in files)


def test_cache_keeps_no_failures_and_skips_broken_entries(
    fault: FaultServer, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    fault.play("400")
    (err,), _ = through(fault, lambda c: CachedClient(c, cache), [ask()])
    assert isinstance(err, LLMError) and (not cache.exists() or not any(cache.iterdir()))
    (ok,), c = through(fault, lambda c: CachedClient(c, cache), [ask()])
    assert ok.text == "echo: hello" and fault.requests == 2
    entry = c.path(ask())
    entry.write_text('{"key": "half an ent')  # what a crash could leave if writes were not atomic
    (again,), _ = through(fault, lambda c: CachedClient(c, cache), [ask()])
    assert not again.cached and fault.requests == 3
    assert [p.name for p in cache.iterdir()] == [entry.name]  # no temporary files left


def test_budget_of_requests_stops_cleanly(fault: FaultServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    reqs = [ask(f"q{i}") for i in range(4)]
    out, b = through(fault, lambda c: Budget(CachedClient(c, cache), max_requests=2), reqs)
    assert [type(r).__name__ for r in out] == ["LLMResponse"] * 2 + ["BudgetExceeded"] * 2
    assert fault.requests == 2 and b.spent
    # the two refused were never sent: held back, not failed
    assert (b.usage.requests, b.usage.failed, b.usage.failures) == (2, 0, {})
    assert b.usage.held_back == 2
    assert (b.usage.prompt_tokens, b.usage.completion_tokens) == (20, 4)
    # the next run, same budget: cache hits cost nothing, so two more get done
    out, b = through(fault, lambda c: Budget(CachedClient(c, cache), max_requests=2), reqs)
    assert all(not isinstance(r, LLMError) for r in out) and fault.requests == 4
    assert (b.usage.cached, b.usage.requests) == (2, 2)
    # and once spent, a hit is still answered
    out, b = through(fault, lambda c: Budget(CachedClient(c, cache), max_requests=0), reqs)
    assert all(r.cached for r in out) and fault.requests == 4


def test_budget_of_tokens(fault: FaultServer) -> None:
    # each answer costs 10 prompt + 2 completion tokens
    out, b = through(fault, lambda c: Budget(c, max_tokens=20), [ask(f"q{i}") for i in range(3)])
    assert isinstance(out[2], BudgetExceeded) and "--max-tokens" in str(out[2])
    assert fault.requests == 2 and b.tokens == 24


def test_budget_holds_under_concurrency(fault: FaultServer) -> None:
    fault.ok_delay = 0.1

    async def go():
        b = Budget(client(fault, concurrency=8), max_requests=3)
        try:
            return await asyncio.gather(
                *(b.complete(ask(f"q{i}")) for i in range(10)), return_exceptions=True
            )
        finally:
            await b.aclose()

    out = run(go)
    assert sum(isinstance(r, BudgetExceeded) for r in out) == 7 and fault.requests == 3


def test_failures_are_tallied(fault: FaultServer) -> None:
    fault.play("400", "500", "500")
    out, b = through(fault, lambda c: Budget(c), [ask("a"), ask("b"), ask("c")], retries=1)
    assert [getattr(r, "kind", "ok") for r in out] == ["client", "server", "ok"]
    assert b.usage.failures == {"client": 1, "server": 1} and b.sent == 3


def test_estimate_leaves_out_cache_hits(fault: FaultServer, tmp_path: Path) -> None:
    reqs = [ask("x" * 40, max_tokens=50), ask("y" * 80, max_tokens=30)]
    assert prompt_tokens(reqs[0]) == 14 + 2 * 4  # (15 + 40 chars) / 4, plus 4 per message
    through(fault, lambda c: CachedClient(c, tmp_path), reqs[:1])

    b = Budget(CachedClient(client(fault), tmp_path))
    est = b.estimate(reqs)
    assert est == (1, prompt_tokens(reqs[1]), 30)
    n, p, c = est
    assert (n, p, c) == (est.requests, est.prompt_tokens, est.completion_tokens)
    assert fault.requests == 1  # estimating sends nothing


def test_api_key_is_never_written(fault: FaultServer, tmp_path: Path) -> None:
    opts = LLMOptions(llm=fault.url, llm_model="fault-model", api_key_env="SAESCOPE_TEST_KEY")
    reqs = [ask(f"q{i}", top_logprobs=2) for i in range(3)]

    async def go():
        b = make_client(opts, tmp_path / "cache")
        try:
            out = [await b.complete(r) for r in reqs]
        finally:
            await b.aclose()
        (tmp_path / "usage.txt").write_text(f"{b!r} {b.usage!r}")
        return out

    fault.play("500", "429:0")
    run(go)
    assert fault.auth[0] == f"Bearer {SECRET}"  # it was used...
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) == 4
    for p in written:  # ...and is in no file
        assert SECRET not in p.read_text(), p


def test_make_client(fault: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = make_client(LLMOptions(llm=fault.url, llm_model="m", max_requests=5), tmp_path)
    assert isinstance(b, Budget) and isinstance(b.inner, CachedClient)
    assert isinstance(b.inner.inner, OpenAIClient) and b.max_requests == 5
    assert b.model == "m" and b.inner.inner.policy.retries == 5
    b = make_client(LLMOptions(cache=False), tmp_path)
    assert isinstance(b.inner, LocalClient) and b.model == "SmolLM2-135M-Instruct"
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(SaescopeError, match="OPENAI_API_KEY"):
        make_client(LLMOptions(llm="https://api.example.com/v1", llm_model="m"), tmp_path)
    dry = make_client(
        LLMOptions(llm="https://api.example.com/v1", llm_model="m", dry_run=True), None
    )
    assert unwrap(dry).model == "m"  # a dry run sends nothing, so it needs no key
    with pytest.raises(SaescopeError, match="--llm-model"):
        make_client(LLMOptions(llm=fault.url), tmp_path)
    with pytest.raises(SaescopeError, match="--llm must be"):
        make_client(LLMOptions(llm="gpt-4o"), tmp_path)
    with pytest.raises(SaescopeError, match="--concurrency"):
        make_client(LLMOptions(concurrency=0), tmp_path)


@dataclass(frozen=True)
class _StageConfig(LLMOptions):
    """A stage config with the LLM options, as explain and score declare theirs."""

    run: str = option("runs/x", "run directory")
    n_examples: int = option(20, "examples per prompt")


def test_stage_configs_inherit_the_options_as_flags(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_config_args(parser, _StageConfig)
    helptext = parser.format_help()
    for flag in ("--llm ", "--llm-model", "--max-requests", "--max-tokens", "--dry-run", "--cache"):
        assert flag in helptext
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("llm: http://127.0.0.1:1/v1\nconcurrency: 2\n")
    ns = parser.parse_args(
        ["--config", str(cfg_file), "--llm-model", "m", "--max-requests", "7", "--dry-run",
         "--cache", "false", "--n-examples", "5"]
    )  # fmt: skip
    cfg = config_from_args(_StageConfig, ns)
    opts = llm_options(cfg)
    assert opts == LLMOptions(
        llm="http://127.0.0.1:1/v1",
        llm_model="m",
        concurrency=2,
        max_requests=7,
        dry_run=True,
        cache=False,
    )
    assert cfg.n_examples == 5 and cfg.run == "runs/x"
    assert set(LLM_RUNTIME_FIELDS) < {f for f in LLMOptions.__dataclass_fields__}


def test_retry_policy() -> None:
    assert parse_retry_after("3") == 3.0 and parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-4") == 0.0 and parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    p = RetryPolicy(retries=3, base=1.0, max_delay=5.0, max_retry_after=20.0)
    for attempt, step in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 5.0), (9, 5.0)]:
        delays = [p.delay(attempt) for _ in range(50)]
        assert all(step / 2 <= d <= step for d in delays) and len(set(delays)) > 1
    assert p.delay(0, retry_after=7.0) == 7.0 and p.delay(0, retry_after=99.0) == 20.0
