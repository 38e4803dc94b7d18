import pytest
import torch

from gpt2es_cli.config import ModelConfig
from gpt2es_cli.errors import GenerationError
from gpt2es_cli.generate import Generation, GenerationConfig, generate, next_tokens
from gpt2es_cli.model import GPT2

GREEDY = GenerationConfig(temperature=0, stop_at_eos=False, max_new_tokens=40)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT2(ModelConfig.from_preset("tiny", vocab_size=300)).eval()


def test_greedy_with_cache_equals_without(model):
    prompt = [5, 17, 42, 8, 99, 3]
    cached = generate(model, prompt, GREEDY, eos_id=0, num_samples=2, use_cache=True)
    plain = generate(model, prompt, GREEDY, eos_id=0, num_samples=2, use_cache=False)
    assert cached == plain
    assert len(cached[0]) == 40 and cached[0] == cached[1]


def test_generation_runs_past_the_context(model):
    cfg = GenerationConfig(temperature=0, stop_at_eos=False, max_new_tokens=150)  # context is 64
    out = generate(model, [1, 2, 3], cfg, eos_id=0)
    assert len(out[0]) == 150


def test_seeded_sampling_is_reproducible(model):
    cfg = GenerationConfig(temperature=1.0, top_k=0, top_p=1.0, seed=123, stop_at_eos=False, max_new_tokens=30)
    a = generate(model, [1, 2], cfg, eos_id=0, num_samples=3)
    assert a == generate(model, [1, 2], cfg, eos_id=0, num_samples=3)
    assert a[0] != a[1]  # samples in a batch differ
    other = GenerationConfig(temperature=1.0, top_k=0, top_p=1.0, seed=124, stop_at_eos=False, max_new_tokens=30)
    assert generate(model, [1, 2], other, eos_id=0, num_samples=3) != a


def test_top_k_1_and_tiny_top_p_are_greedy(model):
    greedy = generate(model, [7, 8], GREEDY, eos_id=0)
    for cfg in (
        GenerationConfig(temperature=1.0, top_k=1, top_p=None, seed=1, stop_at_eos=False, max_new_tokens=40),
        GenerationConfig(temperature=1.0, top_k=0, top_p=1e-6, seed=1, stop_at_eos=False, max_new_tokens=40),
    ):
        assert generate(model, [7, 8], cfg, eos_id=0) == greedy


def test_last_only_logits_equal_the_last_position(model):
    idx = torch.tensor([[5, 17, 42, 8, 99, 3]])
    with torch.no_grad():
        full = model(idx)
        last = model(idx, last_only=True)
        cache = model.new_cache(1)
        cached = model(idx, cache, last_only=True)
    assert last.shape == (1, 1, 300) and cache.length == 6
    torch.testing.assert_close(last, full[:, -1:])
    torch.testing.assert_close(cached, full[:, -1:])


LOGITS = torch.tensor([[2.0, -2.0, 1.0, 0.5]])  # softmax: [.62, .01, .23, .14]


def draws(config: GenerationConfig, n: int = 400) -> set[int]:
    """The set of tokens drawn from LOGITS in n independent rows."""
    generator = torch.Generator().manual_seed(0)
    return set(next_tokens(LOGITS.expand(n, 4), config, generator).tolist())


def test_next_tokens_greedy_and_repetition_penalty():
    assert next_tokens(LOGITS, GenerationConfig(temperature=0)).tolist() == [0]
    seen = torch.tensor([[True, True, False, False]])
    # Penalty 4: 2 -> 0.5 and -2 -> -8, so token 2 (logit 1) becomes the most likely.
    assert next_tokens(LOGITS, GenerationConfig(temperature=0, repetition_penalty=4.0), seen=seen).tolist() == [2]
    assert next_tokens(LOGITS.bfloat16(), GenerationConfig(temperature=0)).dtype == torch.long


def test_next_tokens_top_k_and_top_p_limit_the_draws():
    assert draws(GenerationConfig(temperature=1.0, top_k=0, top_p=None)) == {0, 1, 2, 3}
    assert draws(GenerationConfig(temperature=1.0, top_k=2, top_p=None)) == {0, 2}
    # The top token has 0.62: p=0.65 needs the second one too, not the third.
    assert draws(GenerationConfig(temperature=1.0, top_k=0, top_p=0.65)) == {0, 2}
    assert draws(GenerationConfig(temperature=1.0, top_k=3, top_p=0.65)) == {0, 2}
    assert draws(GenerationConfig(temperature=1.0, top_k=3, top_p=0.99)) == {0, 2, 3}
    # A tiny temperature makes sampling greedy.
    assert draws(GenerationConfig(temperature=1e-3, top_k=0, top_p=None)) == {0}


def test_next_tokens_sample_in_proportion():
    generator = torch.Generator().manual_seed(0)
    cfg = GenerationConfig(temperature=1.0, top_k=2, top_p=None)
    picks = next_tokens(LOGITS.expand(4000, 4), cfg, generator)
    # Renormalised over {0, 2}: p(0) = e^2 / (e^2 + e^1) = 0.731; 4000 draws: std 0.007.
    assert abs((picks == 0).float().mean().item() - 0.731) < 0.03


class ScriptedModel(GPT2):
    """Emits token 9 twice, then <|endoftext|> (id 0) for sample 0, and keeps going for sample 1."""

    def forward(self, idx, cache=None, last_only=False):
        B, T = idx.shape
        if cache is not None:
            cache.length += T
        logits = torch.zeros(B, T, self.config.vocab_size)
        generated = idx.shape[1] - 3 if cache is None else None
        n = generated if generated is not None else self._steps
        for b in range(B):
            logits[b, -1, 0 if (b == 0 and n >= 2) else 9] = 10.0
        self._steps = getattr(self, "_steps", 0) + 1
        return logits


def test_stop_at_end_of_text():
    m = ScriptedModel(ModelConfig.from_preset("tiny", vocab_size=50)).eval()
    m._steps = 0
    gen = Generation(m, [1, 2, 3], GenerationConfig(temperature=0, max_new_tokens=6), eos_id=0, num_samples=2)
    steps = list(gen)
    assert gen.samples[0] == [9, 9] and gen.finished[0]
    assert gen.samples[1] == [9] * 6 and not gen.finished[1]
    assert steps[2] == [None, 9]


def test_long_prompt_is_left_truncated(model):
    gen = Generation(model, list(range(1, 101)), GREEDY, eos_id=0)
    assert gen.truncated == 36 and gen.prompt_ids == list(range(37, 101))
    assert len(next(iter(gen))) == 1


def test_empty_prompt_starts_from_end_of_text(model):
    assert Generation(model, [], GREEDY, eos_id=0).prompt_ids == [0]


def test_invalid_settings_listed_together(model):
    with pytest.raises(GenerationError) as e:
        GenerationConfig(temperature=-1, top_p=0, max_new_tokens=0, repetition_penalty=0).validate()
    for part in ("--temperature", "--top-p", "--max-new-tokens", "--repetition-penalty"):
        assert part in str(e.value)
    with pytest.raises(GenerationError, match="--num-samples must be >= 1"):
        Generation(model, [1], GREEDY, eos_id=0, num_samples=0)


class CountingAutocast:
    """A stand-in autocast context that counts how often it is entered."""

    def __init__(self):
        self.entered = 0

    def __enter__(self):
        self.entered += 1

    def __exit__(self, *exc):
        return False


def test_generate_runs_each_step_under_the_given_autocast(model):
    autocast = CountingAutocast()
    out = generate(model, [5, 17], GREEDY, eos_id=0, autocast=autocast)
    assert autocast.entered == GREEDY.max_new_tokens  # one forward per new token, each inside it
    assert out == generate(model, [5, 17], GREEDY, eos_id=0)
    bf16 = generate(model, [5, 17], GREEDY, eos_id=0, autocast=torch.autocast("cpu", dtype=torch.bfloat16))
    assert len(bf16[0]) == GREEDY.max_new_tokens


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope"])
def test_the_fixed_shape_decode_step_gives_the_cached_forward_logits(position):
    torch.manual_seed(0)
    m = GPT2(ModelConfig.from_preset("tiny", vocab_size=300, position=position)).eval()
    tokens = torch.randint(1, 300, (2, 20))
    with torch.inference_mode():
        plain, fixed = m.new_cache(2), m.new_cache(2)
        m(tokens[:, :5], plain)
        m(tokens[:, :5], fixed)
        for t in range(5, 20):
            expected = m(tokens[:, t : t + 1], plain, last_only=True)[:, -1, :]
            got = m.decode_step(tokens[:, t : t + 1], torch.tensor([fixed.length]), fixed)
            fixed.length += 1
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_compiled_sampling_gives_the_same_greedy_text_and_never_recompiles(model):
    pytest.importorskip("torch._inductor")
    import shutil

    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("torch.compile on the CPU needs a C compiler")
    cfg = GenerationConfig(temperature=0, stop_at_eos=False, max_new_tokens=90)  # past the context of 64
    prompt = [5, 17, 42, 8, 99, 3]
    plain = generate(model, prompt, cfg, eos_id=0, num_samples=2)
    torch._dynamo.reset()
    try:
        compiled = generate(model, prompt, cfg, eos_id=0, num_samples=2, compile=True)
    except Exception as e:  # a machine without a working C++ toolchain cannot compile for the CPU
        if any(word in str(e) for word in ("compiler", "Python.h", "g++", "cc1plus", "CppCompileError")):
            pytest.skip(f"torch.compile cannot build CPU kernels here: {str(e).splitlines()[0][:200]}")
        raise
    assert compiled == plain
    previous = torch._dynamo.config.error_on_recompile
    torch._dynamo.config.error_on_recompile = True  # another prompt, another length: the same graph
    try:
        assert generate(model, [1, 2], cfg, eos_id=0, num_samples=2, compile=True) == generate(
            model, [1, 2], cfg, eos_id=0, num_samples=2)
    finally:
        torch._dynamo.config.error_on_recompile = previous
        torch._dynamo.reset()
