"""The "http" judge against real server processes on 127.0.0.1: a small chat-completions server
(tests/rewards_chat_server.py) for success, crafted outputs, slow, flaky, broken and down servers and
the cache; and `transformers serve` on a local checkpoint."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from rewards_tiny_model import save_tiny_llama

from exprl.data import builtin_problems
from exprl.rewards import Rollout, build_reward

PROBLEMS = builtin_problems("linear", 2, "train", 4, seed=2)


@pytest.fixture(scope="module")
def server():
    """Base URL ("http://127.0.0.1:PORT/v1") of a fresh chat server process."""
    script = Path(__file__).with_name("rewards_chat_server.py")
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(process.stdout.readline())
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.kill()
        process.wait()


def stats(base_url: str) -> dict:
    return requests.get(base_url.removesuffix("/v1") + "/stats", timeout=5).json()


def says(text: str) -> str:
    """A response that makes the echo server answer `text`."""
    return f"x=1 [judge says: {text}]"


def judge(base_url: str, model: str = "echo", **options):
    return build_reward("http", base_url=base_url, model=model, **{"backoff_s": 0.01, **options})


def test_outcome_grades_from_the_endpoint(server):
    batch = [
        Rollout(p, says(f"Looks right.\nScore: {k}")) for p, k in zip(PROBLEMS, (5, 4, 2, 1), strict=True)
    ]
    assert judge(server).score(batch) == [1.0, 0.75, 0.25, 0.0]


def test_crafted_outputs_through_http(server):
    batch = [Rollout(PROBLEMS[0], says(text)) for text in ("Score: **3**", "I cannot grade this", "Score: 7")]
    reward = judge(server)
    assert reward.score(batch) == [0.5, None, None]
    assert reward.counters["unparsed"] == 2 and reward.counters["ungraded"] == 2


def test_process_grades_each_segment(server):
    reward = judge(server, mode="process")
    response = f"{says('Score: 5')} ### {says('Score: 1')} ###"
    assert reward.score([Rollout(PROBLEMS[0], response)]) == [[1.0, 0.0, 0.25]]  # last segment empty
    assert reward.counters["requests"] == 2


def test_requests_run_concurrently(server):
    before = stats(server)["posts"]
    reward = judge(server, model="slow", concurrency=4)
    batch = [Rollout(PROBLEMS[i % 4], says(f"Score: {1 + i % 5}") + f" #{i}") for i in range(8)]
    assert reward.score(batch) == [(i % 5) / 4 for i in range(8)]
    after = stats(server)
    assert after["posts"] - before == 8
    assert after["max_in_flight"] >= 2


def test_a_slow_server_times_out_into_none(server):
    reward = judge(server, model="slow", timeout_s=0.2, retries=1)
    assert reward.score([Rollout(PROBLEMS[0], says("Score: 5"))]) == [None]
    assert reward.counters["timeout"] == 1 and reward.counters["retries"] == 1
    assert reward.counters["ungraded"] == 1


def test_retries_with_backoff_recover_from_server_errors(server):
    reward = judge(server, model="flaky", retries=3, backoff_s=0.05)
    start = time.monotonic()
    assert reward.score([Rollout(PROBLEMS[1], says("Score: 4"))]) == [0.75]
    assert time.monotonic() - start >= 0.05 + 0.1  # slept 0.05 then 0.1 before the third try
    assert reward.counters["retries"] == 2 and reward.counters["server_error"] == 0


@pytest.mark.parametrize(
    "model, retries, counter, posts",
    [("broken", 2, "server_error", 3), ("denied", 2, "server_error", 1), ("garbage", 2, "bad_response", 1)],
)
def test_failures_become_none_and_a_counter(server, model, retries, counter, posts):
    before = stats(server)["posts"]
    reward = judge(server, model=model, retries=retries)
    assert reward.score([Rollout(PROBLEMS[2], says("Score: 5"))]) == [None]
    assert reward.counters[counter] == 1 and reward.counters["ungraded"] == 1
    assert stats(server)["posts"] - before == posts  # only what may recover is retried


def test_a_server_that_is_down_is_a_connection_error():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    reward = judge(f"http://127.0.0.1:{port}/v1", retries=2)
    assert reward.score([Rollout(PROBLEMS[0], "x=1")]) == [None]
    assert reward.counters["connection_error"] == 1 and reward.counters["retries"] == 2


def test_the_cache_spares_a_resumed_run_its_requests(server, tmp_path):
    batch = [Rollout(p, says(f"Score: {k}")) for p, k in zip(PROBLEMS, (5, 1, 3, 2), strict=True)]
    first = judge(server, cache_dir=tmp_path / "cache").score(batch)
    before = stats(server)["posts"]
    resumed = judge(server, cache_dir=tmp_path / "cache")  # a new process would build a new judge
    assert resumed.score(batch) == first == [1.0, 0.0, 0.5, 0.25]
    assert stats(server)["posts"] == before and resumed.counters["cache_hit"] == 4
    other_model = judge(server, model="slow", cache_dir=tmp_path / "cache")
    assert other_model.score(batch[:1]) == [1.0] and other_model.counters["cache_hit"] == 0


def test_failures_are_not_cached(server, tmp_path):
    judge(server, model="broken", retries=0, cache_dir=tmp_path).score([Rollout(PROBLEMS[0], "x=1")])
    assert not list(tmp_path.rglob("*.json"))


def test_the_api_key_comes_from_the_named_environment_variable(server, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test")
    judge(server, api_key_env="MY_JUDGE_KEY").score([Rollout(PROBLEMS[0], "x=1")])
    assert stats(server)["authorization"] == "Bearer sk-test"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"base_url": "127.0.0.1:8000"}, "base_url"),
        ({"model": ""}, "model"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"retries": -1}, "retries"),
        ({"concurrency": 0}, "concurrency"),
    ],
)
def test_bad_options_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        build_reward("http", **{"base_url": "http://127.0.0.1:1/v1", "model": "m", **options})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_transformers_serve_grades_with_a_local_model(tmp_path):
    """`transformers serve` on a tiny local checkpoint trained to answer "Score: 4" (start-up ~9 s on a
    loaded 2-core box)."""
    model_dir = save_tiny_llama(tmp_path / "grader", says="Score: 4")
    port = free_port()
    command = [str(Path(sys.executable).with_name("transformers")), "serve", str(model_dir)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        start = time.monotonic()
        while time.monotonic() - start < 90:
            assert process.poll() is None, process.stderr.read()
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.25)
        print(f"transformers serve start-up: {time.monotonic() - start:.1f} s")
        base_url = f"http://127.0.0.1:{port}/v1"
        outcome = build_reward("http", base_url=base_url, model=str(model_dir), max_tokens=16, timeout_s=60)
        batch = [Rollout(p, p.reference) for p in PROBLEMS[:2]]
        assert outcome.score(batch) == [0.75, 0.75]
        process_judge = build_reward(
            "http", base_url=base_url, model=str(model_dir), mode="process", max_tokens=16, timeout_s=60
        )
        problem = PROBLEMS[0]
        expected = [[0.75] * (len(problem.steps) + 1)]
        assert process_judge.score([Rollout(problem, problem.reference)]) == expected
    finally:
        process.terminate()
        process.wait(timeout=30)
