"""The HTTP API of `gpt2es serve`, through real clients (the openai package, httpx) against a real
server on 127.0.0.1: uvicorn in a thread, serving the batching engine over a tiny model.

Everything has a timeout; the servers bind port 0 (a free port) and stop at the end of the module.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

import torch  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from serving import running  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from gpt2es_cli.checkpoint import save_model  # noqa: E402
from gpt2es_cli.cli import app as cli_app  # noqa: E402
from gpt2es_cli.config import ModelConfig  # noqa: E402
from gpt2es_cli.model import GPT2  # noqa: E402
from gpt2es_cli.serve import api as api_module  # noqa: E402
from gpt2es_cli.serve import asgi, server  # noqa: E402
from gpt2es_cli.serve.api import create_app  # noqa: E402
from gpt2es_cli.serve.engine import Engine  # noqa: E402

CONTEXT = 1024
KEY = "s3cret-key"
TIMEOUT = 20


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    """The tiny preset with a long context (random weights: the texts are noise, the API is what is tested)."""
    torch.manual_seed(0)
    config = ModelConfig.from_preset("tiny", vocab_size=tiny_tokenizer.vocab_size, n_positions=CONTEXT)
    return GPT2(config).eval()


@contextlib.contextmanager
def engine_of(model, tokenizer, **kw):
    engine = Engine(model, tokenizer, **kw)
    engine.start()
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture(scope="module")
def threads():
    """Tiny models run fastest on one thread, and the shared machine stays usable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def engine(model, tiny_tokenizer, threads):
    with engine_of(model, tiny_tokenizer, max_batch=4, max_queue=16) as engine:
        yield engine


@pytest.fixture(scope="module")
def url(engine, model, tiny_tokenizer):
    app = create_app(engine, tiny_tokenizer, "tiny", context=engine.context, model=model,
                     cors_origins=["http://allowed.example"])
    with running(app) as base:
        yield base


@pytest.fixture(scope="module")
def keyed_url(engine, model, tiny_tokenizer):
    with running(create_app(engine, tiny_tokenizer, "tiny", context=engine.context, model=model, api_key=KEY)) as base:
        yield base


@pytest.fixture
def http(url):
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        yield client


@pytest.fixture
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)


def expect_error(response, status, param=None, code=None):
    """An error in OpenAI's shape, with this status (and param, code)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


# --- the openai package -----------------------------------------------------------------------------


def test_a_completion_through_the_openai_package(client, tiny_tokenizer):
    first = client.completions.create(model="tiny", prompt="Había una vez", max_tokens=8, temperature=0)
    again = client.completions.create(model="tiny", prompt="Había una vez", max_tokens=8, temperature=0)
    assert isinstance(first, openai.types.Completion) and first.object == "text_completion"
    assert first.model == "tiny" and first.id.startswith("cmpl-")
    (choice,) = first.choices
    assert choice.index == 0 and choice.finish_reason in ("stop", "length") and choice.logprobs is None
    assert choice.text == again.choices[0].text  # greedy: the same text
    prompt_tokens = len(tiny_tokenizer.encode("Había una vez"))
    assert first.usage.prompt_tokens == prompt_tokens and 1 <= first.usage.completion_tokens <= 8
    assert first.usage.total_tokens == prompt_tokens + first.usage.completion_tokens


def test_a_streamed_completion_is_the_same_text(client):
    whole = client.completions.create(model="tiny", prompt="El gato", max_tokens=12, temperature=0)
    chunks = list(client.completions.create(model="tiny", prompt="El gato", max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_logprobs_are_the_model_s(client, model, tiny_tokenizer):
    prompt = "La niña leyó"
    result = client.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0, logprobs=3,
                                       extra_body={"ignore_eos": True})
    choice = result.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert len(top) <= 3 and chosen == pytest.approx(max(top.values()), abs=1e-4)  # greedy: the likeliest
    with torch.no_grad():
        expected = model(torch.tensor([tiny_tokenizer.encode(prompt)]))[0, -1].float().log_softmax(-1)
    assert lp.token_logprobs[0] == pytest.approx(expected.max().item(), abs=1e-4)


def test_echo_scores_the_prompt(client, model, tiny_tokenizer):
    prompt = "¿Dónde está la señora Muñoz?"
    ids = tiny_tokenizer.encode(prompt)
    result = client.completions.create(model="tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=2)
    choice = result.choices[0]
    assert choice.text == prompt and choice.finish_reason == "length"
    assert "".join(choice.logprobs.tokens) == prompt and len(choice.logprobs.tokens) == len(ids)
    assert choice.logprobs.token_logprobs[0] is None and choice.logprobs.top_logprobs[0] is None
    with torch.no_grad():
        scores = model(torch.tensor([ids]))[0].float().log_softmax(-1)
    expected = [scores[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
    assert choice.logprobs.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    assert result.usage.completion_tokens == 0 and result.usage.prompt_tokens == len(ids)
    # echo with new tokens: the prompt, then the completion
    more = client.completions.create(model="tiny", prompt=prompt, max_tokens=3, echo=True, temperature=0)
    plain = client.completions.create(model="tiny", prompt=prompt, max_tokens=3, temperature=0)
    assert more.choices[0].text == prompt + plain.choices[0].text


def test_n_and_prompt_lists_index_choices_as_openai(client):
    result = client.completions.create(model="tiny", prompt=["Había", "El perro"], n=2, max_tokens=4,
                                       temperature=0)
    assert [c.index for c in result.choices] == [0, 1, 2, 3]
    texts = [c.text for c in result.choices]
    assert texts[0] == texts[1] and texts[2] == texts[3]  # greedy: the two samples of a prompt agree
    single = client.completions.create(model="tiny", prompt="El perro", max_tokens=4, temperature=0)
    assert texts[2] == single.choices[0].text
    ids = client.completions.create(model="tiny", prompt=[[5, 6, 7]], max_tokens=2, temperature=0)
    assert ids.usage.prompt_tokens == 3


def test_a_seed_gives_the_same_sample_and_each_choice_its_own(client):
    def sample(seed):
        return [c.text for c in client.completions.create(model="tiny", prompt="Había una vez", n=2, max_tokens=10,
                                                           temperature=1.0, seed=seed).choices]

    first, again = sample(7), sample(7)
    assert first == again and first[0] != first[1]


def test_stop_strings_cut_the_text(client):
    text = client.completions.create(model="tiny", prompt="Había", max_tokens=30, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = text[5:7]
    assert len(stop) == 2
    cut = client.completions.create(model="tiny", prompt="Había", max_tokens=30, temperature=0, stop=[stop],
                                    extra_body={"ignore_eos": True}).choices[0]
    assert cut.finish_reason == "stop" and cut.text == text[: text.index(stop)]


def test_errors_raise_the_openai_exceptions(client, url):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny", prompt="hola " * 1500, max_tokens=4)
    assert info.value.code == "context_length_exceeded" and f"at most {CONTEXT} tokens" in info.value.message
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="hola", max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="base model"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hola"}])
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_the_api_key(keyed_url, engine, monkeypatch):
    compared = []
    real = asgi.hmac.compare_digest
    monkeypatch.setattr(asgi.hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    body = {"prompt": "hola", "max_tokens": 2}
    with httpx.Client(base_url=keyed_url, timeout=TIMEOUT) as http:
        expect_error(http.post("/v1/completions", json=body), 401, code="invalid_api_key")
        for wrong in ("Bearer nope", f"Basic {KEY}", f"Bearer {KEY}x", "Bearer"):
            expect_error(http.post("/v1/completions", json=body, headers={"Authorization": wrong}), 401)
        assert http.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        expect_error(http.post("/tokenize", json={"prompt": "hola"}), 401)
        expect_error(http.get("/v1/models"), 401)
        assert http.get("/health").status_code == 200 and http.get("/metrics").status_code == 200  # open
    assert compared, "the key is compared with hmac.compare_digest"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed_url + "/v1", api_key="wrong", max_retries=0).models.list()
    good = openai.OpenAI(base_url=keyed_url + "/v1", api_key=KEY, max_retries=0, timeout=TIMEOUT)
    assert good.completions.create(model="tiny", prompt="hola", max_tokens=2).choices


# --- every endpoint over httpx ------------------------------------------------------------------


def test_models_tokenize_detokenize_health(http, tiny_tokenizer):
    listing = http.get("/v1/models").json()
    assert listing["object"] == "list"
    (card,) = listing["data"]
    assert card["id"] == "tiny" and card["object"] == "model" and card["max_model_len"] == CONTEXT
    assert http.get("/v1/models/tiny").json() == card
    expect_error(http.get("/v1/models/other"), 404, code="model_not_found")
    text = "¡Qué día! \x00\x07 «ñ» 😀"
    tokens = http.post("/tokenize", json={"prompt": text}).json()
    assert tokens["tokens"] == tiny_tokenizer.encode(text) and tokens["count"] == len(tokens["tokens"])
    assert tokens["token_strs"] == tiny_tokenizer.token_strings(tokens["tokens"])
    assert http.post("/detokenize", json={"tokens": tokens["tokens"]}).json() == {"prompt": text}
    expect_error(http.post("/tokenize", json={"text": "x"}), 400, param="prompt")
    expect_error(http.post("/detokenize", json={"tokens": [10**6]}), 400, param="tokens")
    expect_error(http.post("/detokenize", json={"tokens": "abc"}), 400, param="tokens")
    health = http.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_the_playground_is_served_at_the_root(http):
    if not api_module.STATIC.is_dir():
        pytest.skip("no playground page in this tree")
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


BAD_FIELDS = [
    ({"prompt": "x", "temperature": "NaN"}, "temperature"),
    ('{"prompt": "x", "temperature": NaN}', "temperature"),  # Python's json reads a bare NaN
    ('{"prompt": "x", "top_p": Infinity}', "top_p"),
    ('{"prompt": "x", "temperature": 1e999}', "temperature"),
    ({"prompt": "x", "temperature": True}, "temperature"),
    ({"prompt": "x", "temperature": -0.5}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "top_k": -1}, "top_k"),
    ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 2.5}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 10**12}, "max_tokens"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": ["a", "b"], "n": 100}, "n"),
    ({"prompt": "x", "logprobs": 6}, "logprobs"),
    ({"prompt": "x", "presence_penalty": 2.5}, "presence_penalty"),
    ({"prompt": "x", "frequency_penalty": "1"}, "frequency_penalty"),
    ({"prompt": "x", "repetition_penalty": 0}, "repetition_penalty"),
    ({"prompt": "x", "seed": 1.5}, "seed"),
    ({"prompt": "x", "echo": 1}, "echo"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "x", "stop": [""]}, "stop"),
    ({"prompt": "x", "stop": 3}, "stop"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
    ({"prompt": "x", "suffix": "y"}, "suffix"),
    ({"prompt": "x", "logit_bias": {"5": 10}}, "logit_bias"),
    ({"prompt": "x", "frobnicate": 1}, "frobnicate"),
    ({}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": ["a", 5]}, "prompt"),
    ({"prompt": [1, 10**6]}, "prompt"),
    ('{"prompt": "\\ud800"}', "prompt"),  # a lone surrogate: not Unicode text
    ({"prompt": "x", "model": 5}, "model"),
]


@pytest.mark.parametrize(("body", "param"), BAD_FIELDS, ids=[str(i) for i in range(len(BAD_FIELDS))])
def test_every_bad_field_is_a_400_naming_it(http, body, param):
    content = body if isinstance(body, str) else json.dumps(body)
    expect_error(http.post("/v1/completions", content=content), 400, param=param)


def test_error_statuses(http, url):
    expect_error(http.post("/v1/completions", content=b'{"prompt": "x",'), 400, code="invalid_json")
    expect_error(http.post("/v1/completions", content=b"\xff\xfe\x00"), 400, code="invalid_json")
    expect_error(http.post("/v1/completions", content=b"[" * 100_000), 400, code="invalid_json")  # deep nesting
    expect_error(http.post("/v1/completions", content=b""), 400, code="invalid_json")
    expect_error(http.post("/v1/completions", json=["prompt"]), 400)
    expect_error(http.post("/v1/completions", json={"prompt": "x", "model": "other"}), 404, code="model_not_found")
    expect_error(http.get("/v1/completions"), 405)
    expect_error(http.get("/no/such/path"), 404)
    expect_error(http.post("/v1/chat/completions", json={"messages": []}), 400, code="unsupported_endpoint")
    # a body past the limit is refused before it is parsed; a long prompt under it before it is tokenized
    start = time.perf_counter()
    expect_error(http.post("/v1/completions", json={"prompt": "x" * 10_000_000}), 413)
    expect_error(http.post("/v1/completions", json={"prompt": "y" * 900_000}), 400, code="context_length_exceeded")
    assert time.perf_counter() - start < 5
    error = expect_error(http.post("/v1/completions", json={"prompt": "hola " * 1200}), 400, param="prompt",
                         code="context_length_exceeded")
    assert f"shorten the prompt to {CONTEXT - 1} tokens" in error["message"]
    assert http.get("/health").json()["status"] == "ok"  # none of it hurt the server


def test_max_tokens_past_the_context_is_cut_to_what_it_leaves(http):
    body = {"prompt": "hola", "max_tokens": 10**6, "temperature": 0, "ignore_eos": True}
    result = http.post("/v1/completions", json=body).json()
    assert result["choices"][0]["finish_reason"] == "length"
    assert result["usage"]["total_tokens"] == CONTEXT


def test_an_empty_prompt_starts_a_document(http):
    result = http.post("/v1/completions", json={"prompt": "", "max_tokens": 3, "temperature": 0}).json()
    assert isinstance(result["choices"][0]["text"], str) and result["usage"]["prompt_tokens"] == 1


def test_unicode_and_control_characters(http):
    text = "¿Qué tal? \x00\x01\x1b[31m \u202e ñandú 😀 \ufeff"
    result = http.post("/v1/completions", json={"prompt": text, "max_tokens": 4, "echo": True}).json()
    assert result["choices"][0]["text"].startswith(text)


def test_cors(http):
    allowed = {"Origin": "http://allowed.example"}
    preflight = http.options("/v1/completions", headers={**allowed, "Access-Control-Request-Method": "POST",
                                                          "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://allowed.example"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    response = http.get("/v1/models", headers=allowed)
    assert response.headers["access-control-allow-origin"] == "http://allowed.example"
    other = http.get("/v1/models", headers={"Origin": "http://elsewhere.example"})
    assert "access-control-allow-origin" not in other.headers


def test_a_full_queue_is_a_429_with_retry_after(model, tiny_tokenizer, threads):
    with engine_of(model, tiny_tokenizer, max_batch=1, max_queue=0) as engine:
        app = create_app(engine, tiny_tokenizer, "tiny", context=engine.context, model=model)
        with running(app) as base, httpx.Client(base_url=base, timeout=TIMEOUT) as http:
            response = http.post("/v1/completions", json={"prompt": "x", "n": 2, "max_tokens": 4})
            expect_error(response, 429, code="queue_full")
            assert response.headers["retry-after"] == "1"
            with pytest.raises(openai.RateLimitError):
                openai.OpenAI(base_url=base + "/v1", api_key="-", max_retries=0).completions.create(
                    model="tiny", prompt="x", n=2, max_tokens=4)
            assert http.post("/v1/completions", json={"prompt": "x", "max_tokens": 4}).status_code == 200
            deadline = time.monotonic() + TIMEOUT
            while engine.stats().running or engine.stats().waiting:  # the refused ones left nothing behind
                assert time.monotonic() < deadline
                time.sleep(0.01)


def metric(text, name, **labels):
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def test_metrics(http):
    http.post("/v1/completions", json={"prompt": "hola", "max_tokens": 3})
    expect_error(http.post("/v1/completions", json={"prompt": 5}), 400)
    response = http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert metric(text, "gpt2es_requests_total", endpoint="/v1/completions", status="200") >= 1
    assert metric(text, "gpt2es_requests_total", endpoint="/v1/completions", status="400") >= 1
    assert metric(text, "gpt2es_tokens_generated_total") >= 3
    assert metric(text, "gpt2es_prompt_tokens_total") >= 1
    assert metric(text, "gpt2es_running_sequences") is not None and metric(text, "gpt2es_queue_length") == 0
    assert metric(text, "gpt2es_max_batch") == 4
    assert metric(text, "gpt2es_time_to_first_token_seconds_count") >= 1
    assert metric(text, "gpt2es_request_latency_seconds_count") >= 1
    assert metric(text, "gpt2es_completions_total", finish_reason="length") >= 1


# --- a client that goes away ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow(model, tiny_tokenizer, threads):
    """A server whose engine takes 10 ms a step (1000 tokens: 10 s), so that a request is still
    running when its client leaves; yields (url, engine)."""
    slowed = copy.deepcopy(model)
    step = slowed.decode_step

    def slow_step(*args, **kw):
        time.sleep(0.01)
        return step(*args, **kw)

    slowed.decode_step = slow_step
    with engine_of(slowed, tiny_tokenizer, max_batch=2, max_queue=4) as engine:
        app = create_app(engine, tiny_tokenizer, "tiny", context=engine.context, model=slowed)
        with running(app) as base:
            yield base, engine


def wait_idle(engine, seconds=3.0):
    """Seconds until the engine has nothing running or waiting (fails past `seconds`)."""
    start = time.monotonic()
    while engine.stats().running or engine.stats().waiting:
        assert time.monotonic() - start < seconds, engine.stats()
        time.sleep(0.01)
    return time.monotonic() - start


def test_a_disconnect_mid_stream_frees_the_place_at_once(slow):
    base, engine = slow
    before = engine.stats().tokens_generated
    body = {"prompt": "Había", "max_tokens": 1000, "stream": True, "ignore_eos": True}
    with httpx.Client(base_url=base, timeout=TIMEOUT) as http, http.stream("POST", "/v1/completions", json=body) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        assert engine.stats().running == 1
    assert wait_idle(engine) < 1.0
    assert engine.stats().tokens_generated - before < 200  # cancelled, far from its 1000 tokens


def test_a_disconnect_while_waiting_for_a_whole_completion_frees_the_place(slow):
    base, engine = slow
    before = engine.stats().tokens_generated
    with httpx.Client(base_url=base, timeout=0.3) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/v1/completions", json={"prompt": "Había", "max_tokens": 1000, "ignore_eos": True})
    assert wait_idle(engine) < 1.0
    assert engine.stats().tokens_generated - before < 200


def test_the_openai_stream_closed_early_cancels_too(slow):
    base, engine = slow
    client = openai.OpenAI(base_url=base + "/v1", api_key="-", max_retries=0, timeout=TIMEOUT)
    stream = client.completions.create(model="tiny", prompt="Había", max_tokens=1000, stream=True,
                                       extra_body={"ignore_eos": True})
    next(iter(stream))
    stream.close()
    assert wait_idle(engine) < 1.0


# --- the command ------------------------------------------------------------------------------------


def test_a_port_in_use_is_one_line(tiny_checkpoint):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli_app, ["serve", str(tiny_checkpoint), "--port", str(port)])
    assert result.exit_code == 1
    assert result.output.strip() == (f"error: port {port} on 127.0.0.1 is in use (another server?): choose another "
                                     f"with --port, e.g. --port {port + 1}")


def test_a_missing_extra_is_one_line(tiny_checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if it were not installed
    result = CliRunner().invoke(cli_app, ["serve", str(tiny_checkpoint)])
    assert result.exit_code == 1
    assert result.output.strip() == "error: gpt2es serve needs the serve extra: pip install 'gpt2es[serve]'"


def test_bad_settings_are_one_line(tiny_checkpoint):
    result = CliRunner().invoke(cli_app, ["serve", str(tiny_checkpoint), "--port", "70000", "--max-batch", "0"])
    assert result.exit_code == 1
    assert "--port must be >= 0 and <= 65535" in result.output and "--max-batch" in result.output


def test_the_command_serves_and_stops_on_ctrl_c(tmp_path, model, tiny_tokenizer):
    run = tmp_path / "runs" / "cuentos"
    run.mkdir(parents=True)
    save_model(run / "best.pth", model, model.config, tiny_tokenizer)
    env = {**os.environ, "GPT2ES_API_KEY": KEY, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    process = subprocess.Popen([sys.executable, "-m", "gpt2es_cli", "serve", "--port", "0", "--max-queue", "200"],
                               cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = process.stdout.readline()  # printed once it listens
        urls = process.stdout.readline() + process.stdout.readline()
        assert "playground: http://127.0.0.1:" in urls and "/v1" in urls, urls
        assert first.startswith("serving cuentos ") and f"{CONTEXT} tokens of context" in first, first
        base = first.split(" on ")[-1].strip()
        assert base.startswith("http://127.0.0.1:")
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=base, timeout=TIMEOUT) as http:
            assert http.get("/health").status_code == 200
            assert http.post("/v1/completions", json={"prompt": "hola", "max_tokens": 2}).status_code == 401
            done = http.post("/v1/completions", json={"prompt": "hola", "max_tokens": 2}, headers=headers)
            assert done.status_code == 200 and done.json()["model"] == "cuentos"
            # Ctrl-C with a stream in flight that outlasts the grace period (128 x 1000 tokens, 8 at a time):
            # it ends with the shutdown error event, and nothing hangs
            body = {"prompt": "hola", "max_tokens": 1000, "n": 128, "stream": True, "ignore_eos": True}
            with http.stream("POST", "/v1/completions", headers=headers, json=body) as stream:
                lines = stream.iter_lines()
                assert next(lines).startswith("data: ")
                stopping = time.monotonic()
                process.send_signal(signal.SIGINT)
                last = [line for line in lines if line][-1]
        assert json.loads(last.removeprefix("data: "))["error"]["code"] == "shutting_down"
        out, err = process.communicate(timeout=TIMEOUT)
        assert time.monotonic() - stopping < server.GRACE_SECONDS + 3
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert KEY not in first + urls + out + err  # the key is never printed
    assert "Ctrl-C to stop" in err and err.strip().endswith("stopped")
