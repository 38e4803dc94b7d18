"""`gpt2es serve` under a bounded load: 200 requests from 16 clients at once, good ones (streamed and
not) mixed with malformed ones and clients that leave mid-stream, against the command itself (a
subprocess on 127.0.0.1, a free port). The server never dies, every good request completes, every
bad one gets a clean JSON error, and its memory stays bounded.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

import torch  # noqa: E402

from gpt2es_cli.checkpoint import save_model  # noqa: E402
from gpt2es_cli.config import ModelConfig  # noqa: E402
from gpt2es_cli.model import GPT2  # noqa: E402

REQUESTS = 200
CLIENTS = 16
TIMEOUT = 30
RSS_GROWTH_MB = 200
"""How much the server's resident memory may grow over the load (generous: allocator caches, counters)."""


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB (Linux; None elsewhere)."""
    status = Path(f"/proc/{pid}/status")
    if not status.is_file():
        return None
    line = next(line for line in status.read_text().splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_tokenizer):
    """`gpt2es serve` on a tiny model with a 256-token context; yields (base URL, process)."""
    torch.manual_seed(0)
    config = ModelConfig.from_preset("tiny", vocab_size=tiny_tokenizer.vocab_size, n_positions=256)
    path = tmp_path_factory.mktemp("load") / "tiny.pth"
    save_model(path, GPT2(config).eval(), config, tiny_tokenizer)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    env.pop("GPT2ES_API_KEY", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "gpt2es_cli", "serve", str(path), "--port", "0", "--max-batch", "8", "--max-queue", "64"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = process.stdout.readline()
        assert first.startswith("serving "), first + process.stderr.read()
        yield first.split(" on ")[-1].strip(), process
    finally:
        process.terminate()
        try:
            process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


SENTENCES = ["Había una vez", "El pequeño ratón", "¿Dónde está la señora Muñoz?", "La niña leyó el libro",
             "Mañana iremos a la montaña", "Cuando llegó el invierno"]
GOOD = ("complete", "stream", "stream_logprobs", "empty", "unicode", "clamped", "n_and_list")
BAD = ("malformed", "huge_max_tokens", "nan_string", "nan_bare", "infinity", "ten_mb", "lone_surrogate",
       "garbage", "bad_type")
LEAVES = ("disconnect",)


def request_of(kind: str, rng: random.Random) -> dict:
    """The httpx arguments of one request of `kind`."""
    prompt = rng.choice(SENTENCES)
    body = {"prompt": prompt, "max_tokens": rng.randint(4, 24), "temperature": 0.8, "seed": rng.randrange(10**6)}
    raw = {
        "malformed": b'{"prompt": "Hab\xc3\xada", "max_tokens": ',
        "nan_bare": b'{"prompt": "x", "temperature": NaN}',
        "infinity": b'{"prompt": "x", "top_p": -Infinity}',
        "lone_surrogate": b'{"prompt": "\\udc00 x"}',
        "garbage": bytes(rng.randrange(256) for _ in range(64)),
    }
    if kind in raw:
        return {"content": raw[kind]}
    changes = {
        "complete": {},
        "stream": {"stream": True},
        "stream_logprobs": {"stream": True, "logprobs": 5},  # what the playground asks for
        "empty": {"prompt": ""},
        "unicode": {"prompt": "¿Qué? \x00\x07\x1b[2J \u202e ñ 😀 " + prompt, "echo": True},
        "clamped": {"max_tokens": 10**6, "temperature": 0},
        "n_and_list": {"prompt": [prompt, "El perro"], "n": 2},
        "huge_max_tokens": {"max_tokens": 10**15},
        "nan_string": {"temperature": "NaN"},
        "ten_mb": {"prompt": "a" * 10_000_000},
        "bad_type": {"stop": {"not": "a list"}},
        "disconnect": {"stream": True, "max_tokens": 200, "ignore_eos": True},
    }[kind]
    return {"json": {**body, **changes}}


def check_events(response) -> str:
    """Read a stream of server-sent events to its [DONE]; return the text."""
    assert response.headers["content-type"].startswith("text/event-stream")
    text, finished, done = [], False, False
    for line in response.iter_lines():
        if not line:
            continue
        assert line.startswith("data: "), line
        data = line.removeprefix("data: ")
        if data == "[DONE]":
            done = True
            break
        chunk = json.loads(data)
        assert "error" not in chunk, chunk
        for choice in chunk["choices"]:
            text.append(choice["text"])
            finished = finished or choice["finish_reason"] in ("stop", "length")
    assert done and finished
    return "".join(text)


def one(http, kind: str, rng: random.Random) -> str:
    """Send one request; return the kind when its answer is the right one (assertions say otherwise)."""
    arguments = request_of(kind, rng)
    if kind == "disconnect":
        with http.stream("POST", "/v1/completions", **arguments) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            next(lines)
            next(lines)  # leave after the first tokens
        return kind
    if kind.startswith("stream"):
        with http.stream("POST", "/v1/completions", **arguments) as response:
            assert response.status_code == 200, response.read()
            check_events(response)
        return kind
    response = http.post("/v1/completions", **arguments)
    assert response.headers["content-type"].startswith("application/json"), kind
    body = response.json()
    if kind in GOOD:
        assert response.status_code == 200, (kind, body)
        assert body["choices"] and all(isinstance(c["text"], str) for c in body["choices"])
        assert body["usage"]["completion_tokens"] >= 0
        if kind == "n_and_list":
            assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    else:
        assert response.status_code == (413 if kind == "ten_mb" else 400), (kind, body)
        assert set(body["error"]) == {"message", "type", "param", "code"}
    return kind


def wait_idle(http, seconds: float = 10.0) -> None:
    """Until the engine has nothing running or waiting, as /metrics says."""
    deadline = time.monotonic() + seconds
    while True:
        text = http.get("/metrics").text
        running = next(line for line in text.splitlines() if line.startswith("gpt2es_running_sequences "))
        waiting = next(line for line in text.splitlines() if line.startswith("gpt2es_queue_length "))
        if float(running.split()[-1]) == 0 and float(waiting.split()[-1]) == 0:
            return
        assert time.monotonic() < deadline, (running, waiting)
        time.sleep(0.05)


def test_the_server_survives_a_mixed_load(served):
    base, process = served
    rng = random.Random(0)
    kinds = [rng.choice(GOOD) for _ in range(REQUESTS // 2)] + [rng.choice(BAD + LEAVES) for _ in range(REQUESTS // 2)]
    rng.shuffle(kinds)
    with httpx.Client(base_url=base, timeout=TIMEOUT) as http:
        for kind in GOOD + BAD + LEAVES:  # warm up: every kind once, so that the memory measured is the steady one
            one(http, kind, random.Random(1))
        wait_idle(http)
        before = rss_mb(process.pid)

    def client(seed: int, share: list[str]) -> list[str]:
        rng = random.Random(seed)
        with httpx.Client(base_url=base, timeout=TIMEOUT) as http:
            return [one(http, kind, rng) for kind in share]

    start = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(client, range(CLIENTS), [kinds[i::CLIENTS] for i in range(CLIENTS)]))
    seconds = time.monotonic() - start
    assert sorted(k for r in results for k in r) == sorted(kinds)  # every request answered as it should be
    assert process.poll() is None, "the server died"
    with httpx.Client(base_url=base, timeout=TIMEOUT) as http:
        assert http.get("/health").json()["status"] == "ok"
        wait_idle(http)  # the clients that left freed their places
        after = rss_mb(process.pid)
        metrics = http.get("/metrics").text
    assert 'gpt2es_completions_total{finish_reason="cancelled"}' in metrics  # the ones that left were cancelled
    if before is not None:
        assert after - before < RSS_GROWTH_MB, (before, after)
    assert seconds < 120, seconds
