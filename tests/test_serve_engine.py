"""The continuous-batching engine of `gpt2es serve`: tiny models, CPU, no HTTP.

A request's tokens must not depend on what runs beside it: greedy output equals `generate`'s,
alone or with other requests joining and leaving; a seeded sampled request draws the same tokens
alone or batched. Every wait has a timeout, so a fault shows as a failure, never as a hang.
"""

import asyncio
import copy
import threading
import time
from dataclasses import replace

import pytest
import torch

from gpt2es_cli.generate import GenerationConfig, generate
from gpt2es_cli.model import GPT2
from gpt2es_cli.quantize import int8_supported, prepare_for_inference
from gpt2es_cli.serve.engine import Engine, EngineClosed, Finished, QueueFull, SamplingParams, TokenEvent
from gpt2es_cli.serve.sampling import SamplingBatch

pytestmark = pytest.mark.usefixtures("one_thread")

WAIT = 20.0
"""Seconds any wait may take before the test fails (a tiny model needs milliseconds)."""


def drain(stream, timeout: float = WAIT) -> tuple[list[TokenEvent], Finished]:
    """Every TokenEvent of a stream and its Finished, each waited for at most `timeout` seconds."""
    events = []
    while True:
        item = stream.get(timeout)
        if isinstance(item, Finished):
            return events, item
        events.append(item)


def ids(events) -> list[int]:
    return [e.token_id for e in events]


def greedy(max_tokens: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0, stop_at_eos=False, **kw)


def reference(model, prompt, max_tokens: int, eos_id: int, **kw) -> list[int]:
    """generate()'s greedy tokens: what the engine must give for the same prompt."""
    config = GenerationConfig(temperature=0, stop_at_eos=False, max_new_tokens=max_tokens, **kw)
    return generate(model, prompt, config, eos_id)[0]


@pytest.fixture(scope="module")
def prompts(spanish_texts, tiny_tokenizer) -> list[list[int]]:
    """Prompts of different lengths (2 to about 20 tokens)."""
    return [tiny_tokenizer.encode(text[:n]) for text, n in zip(spanish_texts, (40, 5, 22, 60, 11, 30), strict=False)]


@pytest.fixture(scope="module")
def models(tiny_config):
    """A tiny model for each position encoding."""
    out = {}
    for position in ("learned", "sinusoidal", "rope"):
        torch.manual_seed(0)
        out[position] = GPT2(replace(tiny_config, position=position)).eval()
    return out


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope"])
def test_greedy_output_is_generates_alone_and_batched(models, position, prompts, tiny_tokenizer):
    model = models[position]
    expected = [reference(model, p, 25, tiny_tokenizer.eos_id) for p in prompts]
    with Engine(model, tiny_tokenizer, max_batch=1) as engine:  # one at a time
        alone = [ids(drain(engine.submit(p, greedy(25)))[0]) for p in prompts]
    with Engine(model, tiny_tokenizer, max_batch=4) as engine:  # all submitted at once: 4 run, 2 wait
        streams = [engine.submit(p, greedy(25)) for p in prompts]
        batched = [ids(drain(s)[0]) for s in streams]
    assert alone == expected
    assert batched == expected


@pytest.mark.parametrize("order", [(0, 1, 2, 3, 4, 5), (5, 3, 1, 0, 2, 4), (2, 4, 0, 5, 1, 3)])
def test_requests_that_join_and_leave_mid_way_change_nothing(tiny_model, tiny_tokenizer, prompts, order):
    lengths = (30, 7, 18, 3, 25, 12)  # each request its own max_tokens: they leave at different steps
    expected = {i: reference(tiny_model, prompts[i], lengths[i], tiny_tokenizer.eos_id) for i in order}
    got = {}
    with Engine(tiny_model, tiny_tokenizer, max_batch=3) as engine:
        first, third = order[0], order[2]
        streams = {first: engine.submit(prompts[first], greedy(lengths[first]))}
        heads = {first: [streams[first].get(WAIT) for _ in range(2)]}  # it runs alone for a while...
        for i in order[1:]:
            streams[i] = engine.submit(prompts[i], greedy(lengths[i]))  # ...then the others join it
            if i == third:
                heads[i] = [streams[i].get(WAIT)]  # the ones after it wait until it has started
        for i, stream in streams.items():
            events, end = drain(stream)
            got[i] = ids(heads.get(i, []) + events)
            assert end.reason == "length" and end.completion_tokens == lengths[i]
            assert end.prompt_tokens == len(prompts[i])
        assert engine.stats().running == 0 and engine.stats().finished == len(order)
    assert got == expected


def test_a_seeded_sampled_request_is_the_same_alone_and_batched(tiny_model, tiny_tokenizer, prompts):
    params = SamplingParams(max_tokens=30, temperature=0.9, top_p=0.9, top_k=40, seed=1234, stop_at_eos=False)
    others = [
        SamplingParams(max_tokens=20, temperature=1.3, seed=7, stop_at_eos=False),  # whole vocabulary
        SamplingParams(max_tokens=40, temperature=0.7, top_k=5, stop_at_eos=False),  # unseeded
        greedy(10),
        SamplingParams(max_tokens=35, temperature=1.0, top_p=0.5, repetition_penalty=1.3, stop_at_eos=False),
    ]
    with Engine(tiny_model, tiny_tokenizer, max_batch=8) as engine:
        alone = ids(drain(engine.submit(prompts[0], params))[0])
        again = ids(drain(engine.submit(prompts[0], params))[0])
        streams = [engine.submit(p, o) for p, o in zip(prompts[1:], others, strict=False)]
        streams[0].get(WAIT)
        batched = engine.submit(prompts[0], params)  # joins a running batch
        beside = ids(drain(batched)[0])
        for s in streams:
            drain(s)
        other_seed = ids(drain(engine.submit(prompts[0], replace(params, seed=99)))[0])
    assert len(alone) == 30
    assert alone == again == beside
    assert other_seed != alone


def test_top_k_1_and_a_tiny_top_p_sample_the_greedy_tokens(tiny_model, tiny_tokenizer, prompts):
    expected = reference(tiny_model, prompts[2], 20, tiny_tokenizer.eos_id)
    with Engine(tiny_model, tiny_tokenizer) as engine:
        for params in (SamplingParams(max_tokens=20, top_k=1, seed=3, stop_at_eos=False),
                       SamplingParams(max_tokens=20, top_p=1e-6, seed=3, stop_at_eos=False)):
            assert ids(drain(engine.submit(prompts[2], params))[0]) == expected


def test_the_repetition_penalty_is_generates(tiny_model, tiny_tokenizer, prompts):
    expected = reference(tiny_model, prompts[0], 30, tiny_tokenizer.eos_id, repetition_penalty=1.8)
    assert expected != reference(tiny_model, prompts[0], 30, tiny_tokenizer.eos_id)
    with Engine(tiny_model, tiny_tokenizer) as engine:
        plain = engine.submit(prompts[1], greedy(30))  # no penalty beside it: unchanged
        got = ids(drain(engine.submit(prompts[0], greedy(30, repetition_penalty=1.8)))[0])
        assert ids(drain(plain)[0]) == reference(tiny_model, prompts[1], 30, tiny_tokenizer.eos_id)
    assert got == expected


def test_presence_and_frequency_penalties_push_away_generated_tokens(tiny_model, tiny_tokenizer, prompts):
    with Engine(tiny_model, tiny_tokenizer) as engine:
        plain = ids(drain(engine.submit(prompts[0], greedy(40)))[0])
        frequency = ids(drain(engine.submit(prompts[0], greedy(40, frequency_penalty=50.0)))[0])
        presence = ids(drain(engine.submit(prompts[0], greedy(40, presence_penalty=50.0)))[0])
    assert len(set(plain)) < len(plain)  # the untrained model repeats itself
    assert len(set(frequency)) == len(frequency) == 40  # a used token never comes back
    assert len(set(presence)) == len(presence) == 40


def test_logprobs_are_the_models_log_softmax_and_the_alternatives_sorted(tiny_model, tiny_tokenizer, prompts):
    prompt = prompts[0]
    with Engine(tiny_model, tiny_tokenizer) as engine:
        beside = engine.submit(prompts[3], greedy(20))  # a request without logprobs in the same batch
        sampled, end = drain(engine.submit(prompt, SamplingParams(max_tokens=20, temperature=1.5, top_k=20,
                                                                  seed=5, logprobs=5, stop_at_eos=False)))
        chosen_only, _ = drain(engine.submit(prompt, greedy(5, logprobs=0)))
        drain(beside)
        plain, _ = drain(engine.submit(prompt, greedy(5)))
    tokens = ids(sampled)
    with torch.no_grad():
        full = tiny_model(torch.tensor([prompt + tokens]))[0].float().log_softmax(-1)  # (T, V)
    rows = full[len(prompt) - 1 : -1]  # row t predicts generated token t
    expected = rows.gather(1, torch.tensor(tokens)[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor([e.logprob for e in sampled]), expected, rtol=0, atol=1e-5)
    for event, row in zip(sampled, rows, strict=True):
        values, top_ids = row.topk(5)
        assert [text for text, _ in event.top_logprobs] == tiny_tokenizer.token_strings(top_ids.tolist())
        got = [lp for _, lp in event.top_logprobs]
        assert got == sorted(got, reverse=True)
        torch.testing.assert_close(torch.tensor(got), values, rtol=0, atol=1e-5)
        assert event.token == tiny_tokenizer.token_strings([event.token_id])[0]
    assert all(e.logprob is not None and e.top_logprobs == () for e in chosen_only)
    assert all(e.logprob is None and e.top_logprobs is None for e in plain)
    assert end.completion_tokens == 20


def scripted(model, tokenizer, text: str):
    """A copy of `model` that, after an empty prompt, predicts the tokens of `text` one by one,
    then <|endoftext|> again and again: known output, through the real forward pass and cache."""
    m = copy.deepcopy(model)
    script = torch.tensor([*tokenizer.encode(text), tokenizer.eos_id])
    real_forward, real_decode = m.forward, m.decode_step

    def force(logits, index):  # logits (B, V), index (B,): which token of the script comes next
        token = script[index.clamp(max=len(script) - 1)]
        return torch.full_like(logits, -20.0).scatter_(1, token[:, None], 20.0)

    def forward(idx, cache=None, last_only=False, **kw):  # the prompt: <|endoftext|> at position 0
        logits = real_forward(idx, cache, last_only, **kw)[:, -1]
        return force(logits, torch.full((idx.size(0),), cache.length - 1))[:, None]

    def decode_step(idx, pos, cache):
        return force(real_decode(idx, pos, cache), pos)

    m.forward, m.decode_step = forward, decode_step
    return m


def texts(events) -> list[str]:
    return [e.text for e in events]


def test_a_character_split_between_tokens_comes_out_whole(tiny_model, tiny_tokenizer):
    model = scripted(tiny_model, tiny_tokenizer, " ¿Dónde está?")
    with Engine(model, tiny_tokenizer) as engine:
        events, end = drain(engine.submit([], SamplingParams(max_tokens=20, temperature=0, logprobs=1)))
    assert [e.token for e in events[:3]] == [" ", "<0xC2>", "<0xBF>"]  # ¿ is two bytes, two tokens
    assert texts(events) == [" ", "", "¿", "Dó", "nd", "e", " e", "stá", "?"]
    assert end.reason == "stop" and end.completion_tokens == 9 and end.prompt_tokens == 0


def test_sampled_texts_join_into_the_decoded_tokens(tiny_model, tiny_tokenizer, prompts):
    with Engine(tiny_model, tiny_tokenizer) as engine:
        runs = [drain(engine.submit(p, SamplingParams(max_tokens=30, seed=i, stop_at_eos=False)))[0]
                for i, p in enumerate(prompts)]
    for events in runs:
        assert "".join(texts(events)) == tiny_tokenizer.decode(ids(events))
    assert any(e.text == "" for events in runs for e in events)  # some token ended inside a character


SCRIPT = "Había una vez un niño que vivía en un pueblo"
"""Tokens 'Había', ' una', ' vez', ' un', ' ni', 'ño', ' que', ' vi', 'v', 'ía', ' en', ' un', ' p', 'ue', 'blo'."""


@pytest.mark.parametrize(("stop", "before", "reason"), [
    (("vez un",), "Había una ", "stop"),  # split across ' vez' and ' un'
    (("ñ",), "Había una vez un ni", "stop"),  # inside a token
    (("pueblo", "vivía", "un"), "Había ", "stop"),  # the earliest of several
    (("Había",), "", "stop"),  # at once
    (("niña",), SCRIPT, "length"),  # 'ni' waits for 'ño', then goes out
])
def test_stop_strings_end_the_text_before_them(tiny_model, tiny_tokenizer, stop, before, reason):
    model = scripted(tiny_model, tiny_tokenizer, SCRIPT)
    n = len(tiny_tokenizer.encode(SCRIPT))
    with Engine(model, tiny_tokenizer) as engine:
        events, end = drain(engine.submit([], SamplingParams(max_tokens=n, temperature=0, stop=stop)))
    assert "".join(texts(events)) == before and end.reason == reason and end.text == ""


def test_text_that_may_start_a_stop_string_waits_for_the_next_token(tiny_model, tiny_tokenizer):
    with Engine(scripted(tiny_model, tiny_tokenizer, SCRIPT), tiny_tokenizer) as engine:
        events, _ = drain(engine.submit([], SamplingParams(max_tokens=7, temperature=0, stop=(" niña",))))
    with Engine(scripted(tiny_model, tiny_tokenizer, "Había una vez"), tiny_tokenizer) as engine:  # then <|endoftext|>
        held, end = drain(engine.submit([], SamplingParams(max_tokens=20, temperature=0, stop=("vez!",))))
    assert texts(events) == ["Había", " una", " vez", " un", "", " niño", " que"]  # ' ni' held, then settled
    assert texts(held) == ["Había", " una", " "]  # 'vez' might start 'vez!'...
    assert end.reason == "stop" and end.text == "vez"  # ...when <|endoftext|> came instead


def test_max_tokens_and_eos_end_a_request(tiny_model, tiny_tokenizer, prompts):
    model = scripted(tiny_model, tiny_tokenizer, "Había una vez")  # then <|endoftext|>
    with Engine(model, tiny_tokenizer) as engine:
        events, end = drain(engine.submit([], SamplingParams(max_tokens=30, temperature=0)))
        assert end.reason == "stop" and texts(events) == ["Había", " una", " vez"] and end.completion_tokens == 3
        events, end = drain(engine.submit([], greedy(6)))  # stop_at_eos=False: it keeps going
        assert end.reason == "length" and ids(events)[3:] == [tiny_tokenizer.eos_id] * 3
        events, end = drain(engine.submit([], SamplingParams(max_tokens=2, temperature=0)))
        assert end.reason == "length" and texts(events) == ["Había", " una"]
        assert 0 < end.first_token_seconds <= end.seconds


def slow(model, seconds: float = 0.005):
    """A copy of `model` whose decode steps take at least `seconds`: requests that surely still run."""
    m = copy.deepcopy(model)
    real = m.decode_step

    def decode_step(*args):
        time.sleep(seconds)
        return real(*args)

    m.decode_step = decode_step
    return m


def test_cancel_frees_the_place_for_the_next_request(tiny_model, tiny_tokenizer, prompts):
    with Engine(slow(tiny_model), tiny_tokenizer, max_batch=1) as engine:
        long = engine.submit(prompts[1], greedy(60))
        waiting = engine.submit(prompts[1], greedy(5))
        long.get(WAIT)
        assert engine.stats().waiting == 1  # the only place is taken
        long.cancel()
        events, end = drain(waiting)  # admitted once the cancelled one left
        assert end.reason == "length" and len(events) == 5
        _, cancelled = drain(long)
        assert cancelled.reason == "cancelled" and cancelled.completion_tokens < 60
        assert engine.stats().finished == 2
        queued = engine.submit(prompts[2], greedy(5))
        queued.cancel()  # cancelled while it may still wait
        assert drain(queued)[1].reason in ("cancelled", "length")
        assert engine.stats().running == 0


def test_leaving_an_iteration_early_cancels_the_request(tiny_model, tiny_tokenizer, prompts):
    with Engine(slow(tiny_model), tiny_tokenizer) as engine:
        stream = engine.submit(prompts[1], greedy(60))
        for _ in stream:
            break
        _, end = drain(stream)
    assert end.reason == "cancelled"


def test_a_full_queue_refuses_and_bad_requests_are_value_errors(tiny_model, tiny_tokenizer, prompts):
    engine = Engine(tiny_model, tiny_tokenizer, max_batch=2, max_queue=1)  # not started: nothing leaves
    try:
        streams = [engine.submit(prompts[0], greedy(5)) for _ in range(3)]  # 2 places + 1 waiting
        with pytest.raises(QueueFull):
            engine.submit(prompts[0], greedy(5))
        with pytest.raises(ValueError, match="context of 64"):
            engine.submit(prompts[0], greedy(64))
        with pytest.raises(ValueError, match="top_p.*logprobs"):
            engine.submit(prompts[0], SamplingParams(max_tokens=5, top_p=0, logprobs=99))
        with pytest.raises(ValueError, match="token ids"):
            engine.submit([tiny_tokenizer.vocab_size], greedy(5))
        engine.start()
        assert all(drain(s)[1].reason == "length" for s in streams)
    finally:
        engine.close()
    with pytest.raises(EngineClosed):
        engine.submit(prompts[0], greedy(5))


def test_close_ends_running_streams_and_wakes_waiting_consumers(tiny_model, tiny_tokenizer, prompts):
    engine = Engine(slow(tiny_model), tiny_tokenizer, max_batch=2)
    idle = Engine(tiny_model, tiny_tokenizer)  # never started: its consumers wait for nothing
    ends: dict[str, Finished] = {}

    def consume(name, stream):
        ends[name] = list(stream)[-1]

    engine.start()
    running = [engine.submit(prompts[1], greedy(60)) for _ in range(3)]  # 2 run, 1 waits
    consumers = [threading.Thread(target=consume, args=(f"running{i}", s)) for i, s in enumerate(running)]
    consumers.append(threading.Thread(target=consume, args=("idle", idle.submit(prompts[0], greedy(5)))))
    for t in consumers:
        t.start()
    running[0].get(WAIT)
    engine.close(timeout=WAIT)
    idle.close(timeout=WAIT)
    for t in consumers:
        t.join(WAIT)
    assert not any(t.is_alive() for t in consumers)
    assert {name: end.reason for name, end in ends.items()} == {
        "running0": "cancelled", "running1": "cancelled", "running2": "cancelled", "idle": "cancelled"}
    assert engine.stats().closed and not engine._thread.is_alive()


def test_an_error_in_a_step_fails_the_batch_and_the_engine_goes_on(tiny_model, tiny_tokenizer, prompts, monkeypatch):
    with Engine(tiny_model, tiny_tokenizer) as engine:
        def broken(*args, **kwargs):
            raise RuntimeError("out of memory")

        monkeypatch.setattr(tiny_model, "decode_step", broken)
        events, end = drain(engine.submit(prompts[0], greedy(10)))
        assert end.reason == "error" and "out of memory" in end.error and len(events) == 1  # the prefill's token
        monkeypatch.undo()
        events, end = drain(engine.submit(prompts[0], greedy(10)))
        assert end.reason == "length" and ids(events) == reference(tiny_model, prompts[0], 10, tiny_tokenizer.eos_id)


def test_a_fault_of_the_engine_itself_ends_every_stream(tiny_model, tiny_tokenizer, prompts, monkeypatch):
    engine = Engine(tiny_model, tiny_tokenizer, max_batch=1)
    monkeypatch.setattr(engine, "_retire", lambda rows: 1 / 0)  # a bug in the loop's own bookkeeping
    streams = [engine.submit(p, greedy(10)) for p in prompts[:3]]  # one runs, two wait
    engine.start()
    try:
        ends = [drain(s)[1] for s in streams]
        assert [e.reason for e in ends] == ["error"] * 3 and "ZeroDivisionError" in ends[0].error
        engine._thread.join(WAIT)
        assert "ZeroDivisionError" in engine.stats().error
        with pytest.raises(EngineClosed, match="ZeroDivisionError"):
            engine.submit(prompts[0], greedy(5))
    finally:
        engine.close()


def test_async_iteration_under_asyncio(tiny_model, tiny_tokenizer, prompts):
    expected = [reference(tiny_model, p, 15, tiny_tokenizer.eos_id) for p in prompts[:4]]

    async def consume(stream):
        return [item async for item in stream]

    async def main(engine, idle):
        streams = [engine.submit(p, greedy(15)) for p in prompts[:4]]
        runs = await asyncio.wait_for(asyncio.gather(*(consume(s) for s in streams)), WAIT)
        waiting = asyncio.ensure_future(consume(idle.submit(prompts[0], greedy(5))))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # it waits, without blocking the loop
        await asyncio.to_thread(idle.close)
        return runs, await asyncio.wait_for(waiting, WAIT)

    idle = Engine(tiny_model, tiny_tokenizer)
    with Engine(tiny_model, tiny_tokenizer, max_batch=2) as engine:
        runs, woken = asyncio.run(main(engine, idle))
    assert [ids(run[:-1]) for run in runs] == expected
    assert all(run[-1].reason == "length" for run in runs)
    assert [type(item) for item in woken] == [Finished] and woken[0].reason == "cancelled"


def test_int8_models_run_in_the_engine(tiny_model, tiny_tokenizer, prompts):
    if not int8_supported(torch.device("cpu")):
        pytest.skip("this torch build has no int8 weight-only matmul on the CPU")
    model = prepare_for_inference(copy.deepcopy(tiny_model), torch.bfloat16, "int8")
    with Engine(model, tiny_tokenizer, max_batch=3) as engine:
        streams = [engine.submit(p, greedy(10)) for p in prompts[:3]]
        runs = [drain(s) for s in streams]
    assert all(end.reason == "length" and len(events) == 10 for events, end in runs)
    assert engine._cache.keys[0].dtype == torch.bfloat16


def test_concurrent_requests_share_decode_steps(tiny_model, tiny_tokenizer, prompts):
    """The point of batching, counted rather than timed: 4 requests together take the decode
    steps of the longest, not of all 4 one after another."""
    with Engine(tiny_model, tiny_tokenizer, max_batch=1) as engine:
        for p in prompts[:4]:
            drain(engine.submit(p, greedy(20)))
        one_at_a_time = engine.stats().steps
    with Engine(tiny_model, tiny_tokenizer, max_batch=4) as engine:
        for s in [engine.submit(p, greedy(20)) for p in prompts[:4]]:
            drain(s)
        together = engine.stats()
    assert one_at_a_time == 4 * 19  # the first token of each comes from its prompt's pass
    assert together.steps < one_at_a_time / 2 and together.prefills == 4 and together.tokens_generated == 80


def test_the_batched_sampler_keeps_each_rows_settings():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]]).expand(6, 4).contiguous()
    rows = [SamplingParams(1, temperature=0), SamplingParams(1, top_k=2), SamplingParams(1, top_p=0.5),
            SamplingParams(1), SamplingParams(1, top_k=1, top_p=0.9), SamplingParams(1, temperature=0.5, top_k=3)]
    batch = SamplingBatch(rows, 4, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    seen = [set() for _ in rows]
    for _ in range(1000):
        draws = torch.rand(6, generator=generator, dtype=torch.float64)
        for s, t in zip(seen, batch.pick(logits, draws).tolist(), strict=True):
            s.add(t)
    assert seen == [{0}, {0, 2}, {0}, {0, 1, 2, 3}, {0}, {0, 2, 3}]
