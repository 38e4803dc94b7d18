"""The playground page at / in a real browser: Debian's Chromium driven by Playwright, against a real
server (the batching engine over a tiny model, served by uvicorn in a thread on 127.0.0.1).

Skips without Chromium (`apt-get install chromium`), the Playwright package (`pip install playwright`:
the package only, it drives the system's Chromium) or the serve extra. Every wait has a timeout.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip("no Chromium to drive (apt-get install chromium)", allow_module_level=True)
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
sync_api = pytest.importorskip("playwright.sync_api")

import torch  # noqa: E402
from serving import running  # noqa: E402

from gpt2es_cli.config import ModelConfig  # noqa: E402
from gpt2es_cli.model import GPT2  # noqa: E402
from gpt2es_cli.serve.api import create_app  # noqa: E402
from gpt2es_cli.serve.engine import Engine  # noqa: E402

expect = sync_api.expect
CONTEXT = 16384  # a greedy stream of the whole context takes seconds: still running when Stop is pressed
KEY = "playground-key"
TIMEOUT = 20
PROMPT = "Había una vez"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def engine(tiny_tokenizer):
    """The tiny preset with a long context and random weights. <|endoftext|>'s embedding is zero, so its
    logit is 0 while the largest of the others is above 0: greedy decoding never ends a text early."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = ModelConfig.from_preset("tiny", vocab_size=tiny_tokenizer.vocab_size, n_positions=CONTEXT)
    model = GPT2(config).eval()
    with torch.no_grad():
        model.wte.weight[tiny_tokenizer.eos_id].zero_()
    engine = Engine(model, tiny_tokenizer, max_batch=2, max_queue=4)
    engine.start()
    yield engine
    engine.close()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base(engine, tiny_tokenizer):
    with running(create_app(engine, tiny_tokenizer, "tiny", context=engine.context, model=engine.model)) as url:
        yield url


@pytest.fixture(scope="module")
def keyed(engine, tiny_tokenizer):
    """The same engine behind an API key."""
    app = create_app(engine, tiny_tokenizer, "tiny", context=engine.context, api_key=KEY, model=engine.model)
    with running(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield instance
        instance.close()


@contextlib.contextmanager
def page_of(browser, url, locale="en-US"):
    context = browser.new_context(locale=locale, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT * 1000)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(error))
    page.goto(url + "/")
    try:
        yield page
    finally:
        context.close()
    assert not errors, errors  # no script error on the page


def post(url, body):
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        return json.loads(response.read())


def health(base):
    with urllib.request.urlopen(base + "/health", timeout=TIMEOUT) as response:
        return json.loads(response.read())


def cancelled(base):
    """Completions the server has counted as cancelled (a client that went away), from /metrics."""
    with urllib.request.urlopen(base + "/metrics", timeout=TIMEOUT) as response:
        text = response.read().decode()
    found = re.search(r'^gpt2es_completions_total\{finish_reason="cancelled"\} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def tokens_of(page):
    """The texts of the tokens the page shows, as the API sent them."""
    return page.evaluate("state.tokens.map(t => t.text)")


def test_generate_streams_the_text_and_colours_each_token(browser, base, tiny_tokenizer, tmp_path):
    with page_of(browser, base) as page:
        expect(page.locator("#model-name")).to_have_text("tiny")  # from /v1/models
        expect(page.locator("#model-context")).to_contain_text(str(CONTEXT))
        page.fill("#prompt", PROMPT)
        expect(page.locator("#prompt-count")).to_have_text(f"{len(tiny_tokenizer.encode(PROMPT))} tokens")  # /tokenize
        page.fill("#temperature", "0")
        page.fill("#max_tokens", "40")
        page.click("#generate")
        status = page.locator("#status")
        expect(status).to_have_attribute("data-finish", "length")
        expect(status).to_contain_text("generated: 40")
        shown = page.inner_text("#text .completion")
        assert page.inner_text("#text .prompt") == PROMPT

        # What the page shows is what the API generates (greedy: the same text streamed or not).
        answer = post(base + "/v1/completions", {"prompt": PROMPT, "max_tokens": 40, "temperature": 0, "logprobs": 5})
        assert shown == answer["choices"][0]["text"] != ""
        assert tokens_of(page) == answer["choices"][0]["logprobs"]["tokens"]

        # Every token coloured by its probability; hovering one shows its five most likely alternatives.
        tokens = page.locator("#tokens .tok")
        expect(tokens).to_have_count(40)
        classes = tokens.evaluate_all("spans => spans.map(s => s.className)")
        assert all(any(f"p{b}" in c.split() for b in range(5)) for c in classes), classes
        tokens.nth(3).hover()
        tip = page.locator("#tip")
        expect(tip).to_be_visible()
        expect(tip.locator("li")).to_have_count(5)
        expect(tip.locator("li").first).to_have_class("chosen")  # greedy took the most likely one
        assert "%" in tip.locator("li").first.inner_text()
        # and from the keyboard: arrow keys move between tokens, Esc closes the alternatives
        tokens.first.focus()
        page.keyboard.press("ArrowRight")
        assert page.evaluate("document.activeElement.dataset.index") == "1"
        expect(tip).to_be_visible()
        page.keyboard.press("Escape")
        expect(tip).to_be_hidden()

        tokens.nth(5).hover()
        expect(tip).to_be_visible()
        shot = tmp_path / "playground.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
        assert shot.stat().st_size > 10_000


def test_stop_ends_the_stream_and_frees_its_place(browser, base):
    longest = CONTEXT - 4
    before = cancelled(base)
    with page_of(browser, base) as page:
        page.fill("#prompt", PROMPT)
        page.fill("#temperature", "0")
        page.fill("#max_tokens", str(longest))
        page.click("#generate")
        status = page.locator("#status")
        page.wait_for_function("state.tokens.length >= 5")
        # streamed: text is on the page while the stream still runs
        assert page.get_attribute("#status", "data-finish") == ""
        assert page.inner_text("#text .completion") != ""
        expect(page.locator("#stop")).to_be_enabled()
        page.click("#stop")
        expect(status).to_have_attribute("data-finish", "stopped")
        expect(status).to_contain_text("stopped")
        expect(page.locator("#generate")).to_be_enabled()
        expect(page.locator("#stop")).to_be_disabled()
        count = len(tokens_of(page))
        assert 5 <= count < longest
        time.sleep(0.3)
        assert len(tokens_of(page)) == count  # nothing more arrives
    # The server saw the fetch abort as a disconnect and cancelled the request.
    deadline = time.monotonic() + TIMEOUT
    while (now := {**health(base), "cancelled": cancelled(base) - before})["running"] or now["cancelled"] != 1:
        assert time.monotonic() < deadline, now
        time.sleep(0.05)


def test_spanish_labels_for_a_spanish_browser_and_the_switch(browser, base):
    with page_of(browser, base, locale="es-ES") as page:
        assert page.get_attribute("html", "lang") == "es"
        expect(page).to_have_title("gpt2es zona de pruebas")
        expect(page.locator("#generate")).to_have_text("Generar")
        expect(page.locator("#stop")).to_have_text("Detener")
        expect(page.locator("label[for=temperature]")).to_have_text("Temperatura")
        expect(page.locator("label[for=prompt]")).to_have_text("Texto inicial")
        expect(page.locator("label[for=seed]")).to_have_text("Semilla")
        expect(page.locator("#tokens-title")).to_have_text("Probabilidad de cada token")
        page.click("button[data-lang=en]")
        expect(page.locator("#generate")).to_have_text("Generate")
        assert page.get_attribute("html", "lang") == "en"
        assert page.get_attribute("button[data-lang=en]", "aria-pressed") == "true"
        page.reload()  # the choice is remembered
        expect(page.locator("#generate")).to_have_text("Generate")
    with page_of(browser, base, locale="en-GB") as page:
        expect(page.locator("#generate")).to_have_text("Generate")


def test_the_api_s_errors_are_shown_and_the_api_key_is_sent(browser, keyed):
    with page_of(browser, keyed) as page:
        error = page.locator("#error")
        expect(error).to_be_visible()
        expect(error).to_contain_text("401")
        expect(error).to_contain_text("no API key given")  # the API's own message
        page.click("details summary")
        page.fill("#api-key", KEY)
        page.press("#api-key", "Tab")  # a change event: the page asks /v1/models again
        expect(page.locator("#model-name")).to_have_text("tiny")
        expect(error).to_be_hidden()

        page.fill("#prompt", PROMPT)
        page.fill("#temperature", "0")
        page.fill("#max_tokens", "8")
        page.click("#generate")
        expect(page.locator("#status")).to_have_attribute("data-finish", "length")
        assert len(tokens_of(page)) == 8

        page.fill("#prompt", "hola " * CONTEXT)  # longer than the context: a 400 with the API's message
        page.click("#generate")
        expect(page.locator("#status")).to_have_attribute("data-finish", "error")
        expect(error).to_contain_text("400")
        expect(error).to_contain_text(f"reads at most {CONTEXT} tokens")
        expect(page.locator("#generate")).to_be_enabled()
