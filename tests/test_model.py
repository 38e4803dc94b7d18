import math

import pytest
import torch

from gpt2es_cli.config import ModelConfig
from gpt2es_cli.model import GPT2


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT2(ModelConfig.from_preset("tiny", vocab_size=300)).eval()


def test_logits_shape_and_tied_projection(model):
    idx = torch.randint(0, 300, (3, 17))
    assert model(idx).shape == (3, 17, 300)
    assert model.lm_head.weight is model.wte.weight
    assert model.num_parameters() == sum(model.parameter_counts().values())


def test_gpt2_initialisation():
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("tiny", vocab_size=5000, n_layer=8, n_embd=128, n_head=4)
    m = GPT2(cfg)
    assert m.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert m.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    scaled = 0.02 / math.sqrt(2 * cfg.n_layer)
    assert m.h[0].attn.c_proj.weight.std().item() == pytest.approx(scaled, rel=0.1)
    assert m.h[0].mlp.c_proj.weight.std().item() == pytest.approx(scaled, rel=0.1)
    assert torch.all(m.h[0].ln_1.weight == 1) and torch.all(m.h[0].attn.c_attn.bias == 0)


def test_attention_is_causal(model):
    idx = torch.randint(0, 300, (1, 20))
    changed = idx.clone()
    changed[0, 12:] = (changed[0, 12:] + 1) % 300
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_kv_cache_matches_full_forward(model):
    idx = torch.randint(0, 300, (2, 30))
    full = model(idx)
    cache = model.new_cache(2)
    parts = [model(idx[:, :10], cache), model(idx[:, 10:17], cache), model(idx[:, 17:18], cache), model(idx[:, 18:], cache)]
    assert cache.length == 30
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_under_bf16_autocast(model):
    idx = torch.randint(0, 300, (1, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = model(idx)
        cache = model.new_cache(1)
        inc = torch.cat([model(idx[:, :8], cache), model(idx[:, 8:], cache)], dim=1)
    torch.testing.assert_close(inc.float(), full.float(), atol=0.05, rtol=0.05)


def test_context_limit(model):
    with pytest.raises(ValueError, match="exceeds the context"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_dropout_only_in_training():
    torch.manual_seed(0)
    m = GPT2(ModelConfig.from_preset("tiny", vocab_size=300, dropout=0.5))
    idx = torch.randint(0, 300, (2, 16))
    m.train()
    assert not torch.allclose(m(idx), m(idx))
    m.eval()
    torch.testing.assert_close(m(idx), m(idx))


def test_activation_choice_changes_the_function():
    torch.manual_seed(0)
    a = GPT2(ModelConfig.from_preset("tiny", vocab_size=300, activation="gelu")).eval()
    b = GPT2(ModelConfig.from_preset("tiny", vocab_size=300, activation="gelu_new")).eval()
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 300, (1, 8))
    assert not torch.equal(a(idx), b(idx))
    torch.testing.assert_close(a(idx), b(idx), atol=1e-2, rtol=1e-2)


def test_backward_reaches_every_parameter(model):
    model.train()
    idx = torch.randint(0, 300, (2, 16))
    loss = torch.nn.functional.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.flops_per_token(16) > 6 * 0.9 * model.num_parameters()


def _loss_and_grads(checkpointing: bool, autocast: torch.dtype | None = None):
    torch.manual_seed(0)
    m = GPT2(ModelConfig.from_preset("tiny", vocab_size=300, dropout=0.2)).train()
    m.activation_checkpointing = checkpointing
    torch.manual_seed(1)  # the same data and dropout masks in both runs
    idx = torch.randint(0, 300, (3, 33))
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        logits = m(idx[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), idx[:, 1:].flatten())
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in m.named_parameters()}


@pytest.mark.parametrize("autocast", [None, torch.bfloat16])
def test_activation_checkpointing_gives_the_same_gradients_with_dropout(autocast):
    plain_loss, plain = _loss_and_grads(False, autocast)
    loss, grads = _loss_and_grads(True, autocast)
    torch.testing.assert_close(loss, plain_loss)
    for name, grad in plain.items():
        torch.testing.assert_close(grads[name], grad, msg=name)


def test_activation_checkpointing_only_where_a_backward_pass_follows(model, monkeypatch):
    import gpt2es_cli.model as model_module

    calls = []
    real = model_module.checkpoint
    monkeypatch.setattr(model_module, "checkpoint", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    model.activation_checkpointing = True
    try:
        idx = torch.randint(0, 300, (2, 10))
        expected = model(idx)  # eval mode
        with torch.no_grad():
            model.train()
            model(idx)  # no gradients
            cache = model.new_cache(2)
            model(idx[:, :4], cache)
            model(idx[:, 4:], cache)  # the KV cache (generation)
        assert calls == []
        model.train()
        torch.testing.assert_close(model(idx), expected)  # no dropout in the tiny preset: the same function
        assert len(calls) == model.config.n_layer
    finally:
        model.activation_checkpointing = False
        model.eval()
