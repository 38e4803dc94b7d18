"""Instruction tuning: the two example formats, the chat templates, the loss mask and packing, the
loss with ignored targets, the demo instruction set, fine-tuning that answers better, `sample --chat`,
the template in an export (transformers' apply_chat_template), and bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from gpt2es_cli.chat import (
    CHAT_MARKERS,
    CHATML,
    IM_END,
    TEXT_MARKERS,
    encode_chat,
    end_of_turn_id,
    fit_conversation,
    render,
    template_for,
)
from gpt2es_cli.checkpoint import load_checkpoint, save_model
from gpt2es_cli.cli import app
from gpt2es_cli.config import ModelConfig, PrepareConfig
from gpt2es_cli.data.batches import TokenWindows
from gpt2es_cli.data.dataset import PreparedDataset
from gpt2es_cli.data.demo import generate_stories
from gpt2es_cli.data.demo.questions import generate_examples, questions
from gpt2es_cli.data.instructions import Problem, conversation, prepare_instructions
from gpt2es_cli.errors import DataError, TokenizerError
from gpt2es_cli.evaluate import EvalText, evaluate_ids
from gpt2es_cli.loss import IGNORE_INDEX, cross_entropy, linear_cross_entropy
from gpt2es_cli.model import GPT2
from gpt2es_cli.tokenizer import Tokenizer

runner = CliRunner()

QUESTIONS = [
    ("¿Dónde vive el niño?", "Vive en un pueblo pequeño junto al río."),
    ("¿Con quién está la señora Muñoz?", "Está en el jardín con su perro."),
    ("¿Qué hizo la niña al final del libro?", "Sonrió cuando llegó al final."),
    ("¿Dónde cantó el pájaro?", "Sobre el árbol más alto del bosque."),
    ("¿Qué encendió la familia en invierno?", "La chimenea, y contó historias."),
    ("¿Qué buscaba el ratón?", "Queso en la cocina, pero el gato lo vigilaba."),
    ("¿Por dónde caminaba Lucía?", "Por la playa, en un día muy bonito."),
    ("¿Qué prefería la princesa?", "Los libros a las fiestas del castillo."),
]


def invoke(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


def examples(n: int = 48) -> list[dict]:
    """Short examples in both formats (each one distinct)."""
    out = []
    for i in range(n):
        q, a = QUESTIONS[i % len(QUESTIONS)]
        if i % 2:
            out.append({"instruction": f"{q} ({i})", "input": "Responde en una frase.", "output": a})
        else:
            out.append({"messages": [{"role": "system", "content": "Eres un asistente amable."},
                                     {"role": "user", "content": f"{q} ({i})"},
                                     {"role": "assistant", "content": a}]})
    return out


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records),
                    encoding="utf-8")
    return path


def prepare_to(out: Path, source: Path | str, **kw):
    options = PrepareConfig(dataset=(str(source),), format="instructions", out=out, **kw)
    return prepare_instructions(options)


@pytest.fixture
def chat_data(tmp_path):
    """An instruction dataset with a tokenizer trained for it (ChatML)."""
    source = write_jsonl(tmp_path / "ejemplos.jsonl", examples())
    prepare_to(tmp_path / "chat", source, vocab_size=400, val_fraction=0.2)
    return tmp_path / "chat"


# --- formats ---------------------------------------------------------------------------------


def test_both_formats_become_conversations():
    messages, kind = conversation({"instruction": "Resume el texto.", "input": "Había una vez...", "output": "Un cuento."})
    assert kind == "alpaca" and messages == [
        {"role": "user", "content": "Resume el texto.\n\nHabía una vez..."},
        {"role": "assistant", "content": "Un cuento."},
    ]
    messages, _ = conversation({"instruction": "¿Qué día es?", "output": "Lunes.", "input": "", "system": "Sé breve."})
    assert messages[0] == {"role": "system", "content": "Sé breve."} and messages[1]["content"] == "¿Qué día es?"
    raw = [{"role": "user", "content": "  Hola\r\n<|im_start|>"}, {"role": "assistant", "content": "Hola. <|endoftext|>"}]
    messages, kind = conversation({"messages": raw})
    assert kind == "messages"
    assert messages == [{"role": "user", "content": "Hola"}, {"role": "assistant", "content": "Hola."}]  # cleaned


@pytest.mark.parametrize("value, kind", [
    ([1, 2], "not_an_object"),
    ("texto", "not_an_object"),
    ({"text": "sin formato"}, "missing_field"),
    ({"instruction": "¿Qué?"}, "missing_field"),
    ({"instruction": 5, "output": "x"}, "missing_field"),
    ({"messages": "hola"}, "bad_messages"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "bad_messages"),
    ({"messages": [{"role": "user", "content": 3}]}, "bad_messages"),
    ({"instruction": "¿Qué?", "output": "   "}, "empty_answer"),
    ({"messages": [{"role": "user", "content": "¿Qué?"}]}, "empty_answer"),
    ({"messages": [{"role": "user", "content": "¿Qué?"}, {"role": "assistant", "content": ""}]}, "empty_answer"),
])
def test_bad_records_are_problems_of_their_kind(value, kind):
    problem = conversation(value)
    assert isinstance(problem, Problem) and problem.kind == kind and problem.detail


# --- templates and the mask --------------------------------------------------------------------


def test_the_template_follows_the_tokenizer(tiny_tokenizer):
    trained = Tokenizer.train(["hola mundo"] * 10, 300, min_frequency=1, special_tokens=CHAT_MARKERS)
    assert trained.special_tokens == ["<|endoftext|>", *CHAT_MARKERS]
    assert template_for(trained) == CHATML  # trained for instructions: the markers are tokens
    assert template_for(tiny_tokenizer) == TEXT_MARKERS  # a pretrained vocabulary: text markers
    own = "{% for m in messages %}{{ m['content'] }}{% generation %}x{% endgeneration %}{% endfor %}"
    assert template_for(tiny_tokenizer.with_chat_template(own)) == own  # its own, when it marks the answers
    assert template_for(tiny_tokenizer.with_chat_template("{{ x }}")) == TEXT_MARKERS  # no mask to make: ours
    assert end_of_turn_id(trained.with_chat_template(CHATML)) == trained.token_id(IM_END)
    assert end_of_turn_id(tiny_tokenizer.with_chat_template(TEXT_MARKERS)) == tiny_tokenizer.eos_id


def test_render_marks_the_answers():
    messages = [{"role": "user", "content": "¿Qué tal?"}, {"role": "assistant", "content": "Bien."},
                {"role": "user", "content": "¿Y tú?"}, {"role": "assistant", "content": "También."}]
    r = render(CHATML, messages)
    assert r.text == ("<|endoftext|><|im_start|>user\n¿Qué tal?<|im_end|>\n<|im_start|>assistant\nBien.<|im_end|>\n"
                      "<|im_start|>user\n¿Y tú?<|im_end|>\n<|im_start|>assistant\nTambién.<|im_end|>\n")
    assert [r.text[a:b] for a, b in r.answers] == ["Bien.<|im_end|>", "También.<|im_end|>"]
    r = render(TEXT_MARKERS, messages[:1], add_generation_prompt=True)
    assert r.text == "<|endoftext|>### Usuario:\n¿Qué tal?\n\n### Asistente:\n" and r.answers == []
    r = render(TEXT_MARKERS, messages[:2])
    assert r.text.endswith("### Asistente:\nBien.<|endoftext|>") and r.text[r.answers[0][0]:] == "Bien.<|endoftext|>"


@pytest.mark.parametrize("template", [CHATML, TEXT_MARKERS])
def test_the_mask_scores_exactly_the_answers_and_their_end(template):
    tok = Tokenizer.train([q + a for q, a in QUESTIONS] * 4, 400, min_frequency=1, special_tokens=CHAT_MARKERS)
    tok = tok.with_chat_template(template)
    q, a = QUESTIONS[0]
    messages = [{"role": "user", "content": q}, {"role": "assistant", "content": a}, {"role": "user", "content": "¿Y?"},
                {"role": "assistant", "content": "Nada más."}]
    ids, mask = encode_chat(tok, messages)
    assert len(ids) == len(mask) and mask.dtype == np.uint8
    runs = np.split(np.asarray(ids), np.flatnonzero(np.diff(mask.astype(int))) + 1)
    scored = [tok.decode(run.tolist()) for run, flag in zip(runs, [mask[0], *mask[np.flatnonzero(np.diff(mask)) + 1]])
              if flag]
    end = tok.decode([end_of_turn_id(tok)])
    assert scored == [a + end, "Nada más." + end]
    assert tok.decode(ids) == render(template, messages).text  # the ids spell the rendered text


def test_a_tokenizer_carries_its_template_as_json_and_as_files(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer.with_chat_template(TEXT_MARKERS)
    again = Tokenizer.from_json(tok.to_json())
    assert again.chat_template == TEXT_MARKERS and again.backend.to_str() == tiny_tokenizer.backend.to_str()
    assert Tokenizer.from_json(tiny_tokenizer.to_json()).chat_template is None
    tok.save(tmp_path / "tokenizer.json")
    assert json.loads((tmp_path / "tokenizer.json").read_text())  # the tokenizers library's own file
    assert "chat_template" not in json.loads((tmp_path / "tokenizer.json").read_text())
    assert (tmp_path / "chat_template.jinja").read_text() == TEXT_MARKERS
    assert Tokenizer.from_path(tmp_path).chat_template == TEXT_MARKERS
    assert Tokenizer.from_path(tmp_path / "tokenizer.json").chat_template == TEXT_MARKERS
    bad = json.loads(tiny_tokenizer.to_json()) | {"chat_template": 3}
    with pytest.raises(TokenizerError, match="chat_template is not text"):
        Tokenizer.from_json(json.dumps(bad))


def test_fit_conversation_drops_the_oldest_turns(tiny_tokenizer):
    tok = tiny_tokenizer.with_chat_template(TEXT_MARKERS)
    messages = [{"role": "system", "content": "Sé breve."}]
    for q, a in QUESTIONS:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": "¿Algo más?"})
    whole, dropped = fit_conversation(tok, messages, 10_000)
    assert dropped == 0 and whole == encode_chat(tok, messages, add_generation_prompt=True)[0]
    ids, dropped = fit_conversation(tok, messages, 60)
    assert len(ids) <= 60 and dropped > 0 and dropped % 2 == 0  # whole question-answer pairs
    text = tok.decode(ids)
    assert text.startswith("<|endoftext|>Sé breve.") and text.endswith("¿Algo más?\n\n### Asistente:\n")


# --- the prepared dataset: mask files, packing -------------------------------------------------


def test_prepare_writes_the_mask_beside_the_tokens(chat_data):
    ds = PreparedDataset.open(chat_data)
    assert ds.masked and ds.meta["format_version"] == 2 and ds.meta["instructions"]["template"] == "chatml"
    tok = ds.tokenizer()
    assert tok.chat_template == CHATML and tok.special_tokens == ["<|endoftext|>", *CHAT_MARKERS]
    counts = ds.meta["instructions"]["examples"]
    assert counts["read"] == counts["kept"] == 48 and counts["alpaca"] == counts["messages"] == 24
    for split in ("train", "val"):
        tokens, mask = np.asarray(ds.tokens(split)), np.asarray(ds.mask(split))
        assert len(mask) == len(tokens) and ds.scored_tokens(split) == int(mask.sum()) > 0
        assert tokens[0] == tok.eos_id and mask[0] == 0 and tokens[-1] == tok.eos_id
        scored = tok.decode(tokens[mask == 1].tolist())
        assert scored.count(IM_END) == ds.meta["splits"][split]["documents"]  # one answer per example
        assert "user" not in scored and "¿" not in scored  # no question is scored
    assert ds.verify() == []
    (chat_data / "val.mask.bin").write_bytes(b"\x01" * ds.num_tokens("val"))
    assert PreparedDataset.open(chat_data).verify() == ["val.mask"]
    (chat_data / "val.mask.bin").write_bytes(b"\x01")
    with pytest.raises(DataError, match="val.mask.bin has 1 bytes"):
        PreparedDataset.open(chat_data)


def test_a_window_that_cuts_an_answer_scores_exactly_its_tokens(chat_data):
    ds = PreparedDataset.open(chat_data)
    tok = ds.tokenizer()
    tokens, mask = np.asarray(ds.tokens("train")).astype(np.int64), np.asarray(ds.mask("train"))
    seq = 16
    windows = TokenWindows.open(ds, "train", seq)
    assert windows.masked
    # the answers: runs of scored tokens
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]]).astype(int)))
    runs = list(zip(edges[::2], edges[1::2], strict=True))
    start, end = next((a, b) for a, b in runs if b - a >= 6)
    s = start + (end - start) // 2 - seq  # the window's last target falls in the middle of that answer
    x, y = windows.batch(np.array([s, 0, len(tokens) - seq - 1]))
    for row, offset in zip(range(3), (s, 0, len(tokens) - seq - 1), strict=True):
        expected = mask[offset + 1 : offset + 1 + seq] == 1
        assert torch.equal(y[row] != IGNORE_INDEX, torch.from_numpy(expected))
        assert torch.equal(x[row], torch.from_numpy(tokens[offset : offset + seq]))  # inputs untouched
        assert torch.equal(y[row][y[row] != IGNORE_INDEX], torch.from_numpy(tokens[offset + 1 : offset + 1 + seq][expected]))
    half = (end - start) // 2  # targets s+1 .. s+seq: the answer's first half + 1 tokens are inside
    cut = y[0][-(half + 1):]
    whole = tok.decode(tokens[start:end].tolist())
    assert (cut != IGNORE_INDEX).all() and y[0][-(half + 2)] == IGNORE_INDEX  # the answer, from its first token
    assert whole.startswith(tok.decode(cut.tolist())) and len(cut) < end - start
    windows.close()


def test_packing_shares_the_end_of_text_between_examples(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save(tmp_path / "tok.json")
    source = write_jsonl(tmp_path / "e.jsonl", examples(24))
    r = prepare_to(tmp_path / "markers", source, tokenizer=str(tmp_path / "tok.json"), val_fraction=0.2)
    ds = PreparedDataset.open(r.path)
    assert ds.meta["instructions"]["template"] == "text-markers" and ds.tokenizer().chat_template == TEXT_MARKERS
    eos = tiny_tokenizer.eos_id
    for split in ("train", "val"):
        tokens, mask = np.asarray(ds.tokens(split)), np.asarray(ds.mask(split))
        ends = np.flatnonzero(tokens == eos)
        assert not np.any(np.diff(ends) == 1)  # never two in a row: an answer's end opens the next example
        assert len(ends) == ds.meta["splits"][split]["documents"] + 1
        assert mask[ends[1:]].all() and not mask[ends[0]]  # each example's final <|endoftext|> is learned


# --- the loss with ignored targets ---------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("fused", [True, False])
def test_ignored_targets_match_torch(reduction, fused):
    torch.manual_seed(0)
    hidden = torch.randn(300, 24, requires_grad=True)
    weight = torch.randn(70, 24, requires_grad=True)
    targets = torch.randint(0, 70, (300,))
    targets[torch.rand(300) < 0.7] = IGNORE_INDEX
    if fused:
        ours = linear_cross_entropy(hidden, weight, targets, reduction)
    else:
        ours = cross_entropy(hidden @ weight.t(), targets, reduction)
    grads = torch.autograd.grad(ours, (hidden, weight))
    ref = F.cross_entropy(hidden @ weight.t(), targets, ignore_index=IGNORE_INDEX, reduction=reduction)
    ref_grads = torch.autograd.grad(ref, (hidden, weight))
    torch.testing.assert_close(ours, ref)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)


def test_a_batch_without_answers_has_zero_loss_and_gradient():
    hidden = torch.randn(10, 8, requires_grad=True)
    weight = torch.randn(30, 8, requires_grad=True)
    targets = torch.full((10,), IGNORE_INDEX)
    loss = linear_cross_entropy(hidden, weight, targets)
    loss.backward()
    assert loss.item() == 0.0 and hidden.grad.abs().max() == 0 and weight.grad.abs().max() == 0


def test_the_model_loss_ignores_the_unscored_targets(tiny_model):
    torch.manual_seed(1)
    x = torch.randint(0, tiny_model.config.vocab_size, (2, 20))
    y = torch.randint(0, tiny_model.config.vocab_size, (2, 20))
    y[:, :12] = IGNORE_INDEX
    with torch.no_grad():
        ours = tiny_model(x, targets=y)
        ref = F.cross_entropy(tiny_model(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(ours, ref)


def test_accumulated_micro_batches_train_as_one_batch(chat_data, tmp_path, one_thread):
    """The step's gradient is the mean over all its scored targets, however the batch is split."""
    from conftest import tiny_run

    from gpt2es_cli.training import train

    weights = []
    for name, micro in (("whole", 4), ("split", 1)):
        config = tiny_run(chat_data, tmp_path / name, batch_size=micro, global_batch=4, max_steps=2, seq_len=32,
                          eval_interval=0, sample_tokens=0, optimizer="adamw", seed=5)
        summary = train(config)
        weights.append(load_checkpoint(summary.last_checkpoint).model_state)
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=1e-4, atol=1e-5)


def test_validation_and_eval_count_only_the_answers(chat_data, tiny_config):
    from gpt2es_cli.config import TrainConfig
    from gpt2es_cli.device import select_precision
    from gpt2es_cli.training.evaluation import Evaluator
    from gpt2es_cli.training.parallel import init_parallel

    ds = PreparedDataset.open(chat_data)
    tok = ds.tokenizer()
    torch.manual_seed(0)
    model = GPT2(ModelConfig.from_preset("tiny", vocab_size=tok.vocab_size, n_positions=256)).eval()
    ids, mask = np.asarray(ds.tokens("val")).astype(np.int64), np.asarray(ds.mask("val"))
    n = min(len(ids), 257)
    x, y = torch.from_numpy(ids[: n - 1])[None], torch.from_numpy(ids[1:n]).clone()[None]
    y[torch.from_numpy(mask[1:n] == 0)[None]] = IGNORE_INDEX
    with torch.no_grad():
        expected = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX).item()
    parallel = init_parallel("cpu")
    parallel.wrap(model)
    evaluator = Evaluator(TrainConfig(data=str(chat_data), seq_len=n - 1, batch_size=1), ds, tok, parallel,
                          select_precision("cpu"))
    assert evaluator.loss(np.array([0])) == pytest.approx(expected, rel=1e-5)
    evaluator.close()
    source = EvalText.from_dataset(chat_data, "val")
    assert "answers only" in source.label
    result = evaluate_ids(model, source.ids_for(tok), tok, mask=source.mask_for(tok), context=256)
    assert result.tokens == ds.scored_tokens("val")  # every answer token once, nothing else
    if len(ids) <= 257:
        assert result.loss == pytest.approx(expected, rel=1e-5)
    other = Tokenizer.train(["otro vocabulario"] * 5, 300, min_frequency=1)
    with pytest.raises(DataError, match="answers"):
        source.ids_for(other)


def test_eval_and_inspect_of_an_instruction_dataset(chat_data, tmp_path):
    ds = PreparedDataset.open(chat_data)
    tok = ds.tokenizer()
    config = ModelConfig.from_preset("tiny", vocab_size=tok.vocab_size, n_positions=128)
    torch.manual_seed(0)
    save_model(tmp_path / "m.pth", GPT2(config), config, tok)
    r = invoke("eval", tmp_path / "m.pth", "--data", chat_data, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert "answers only" in out["text"] and out["results"][0]["tokens"] == ds.scored_tokens("val")
    r = invoke("inspect", chat_data)
    assert r.exit_code == 0, r.output
    assert "answers only" in r.stdout and "Instruction examples" in r.stdout and "ChatML" in r.stdout
    r = invoke("inspect", tmp_path / "m.pth")
    assert r.exit_code == 0 and "ChatML (sample --chat)" in r.stdout


# --- the demo instruction set ------------------------------------------------------------------


def test_the_demo_answers_come_from_the_tale():
    keywords = {"urraca": "urraca", "ratones": "ratoncitos", "cabra": "cabra", "cachorro": "cachorro",
                "viento": "roble", "bees": "abejas", "build": "puente", "together": "manantial", "giant": "gigante",
                "dragon": "dragón", "lighthouse": "faro"}
    stories = generate_stories(3)
    for _ in range(60):
        text, tale = next(stories)
        answers = dict(questions(tale))
        hero = str(tale.slots["hero"])
        assert answers["¿Quién es el personaje principal del cuento?"].startswith(f"Es {hero}, ")
        assert hero in text and answers[f"¿Dónde vive {hero}?"] == f"{hero} vive {tale.slots['home']}."
        assert str(tale.slots["home"]).lower() in text.lower() and str(tale.slots["moral"]) in text
        for question, answer in answers.items():
            if question.startswith(("¿Quién tenía", "¿Qué problema")):
                word = keywords[tale.ending]
                assert word in answer and word in text, (question, answer)


def test_the_demo_set_has_both_formats_and_is_deterministic():
    import itertools

    first = list(itertools.islice(generate_examples(0), 20))
    assert first == list(itertools.islice(generate_examples(0), 20))
    assert first != list(itertools.islice(generate_examples(1), 20))
    assert {("messages" in e) for e in first} == {True, False}
    for e in first:
        messages, _ = conversation(e)
        assert messages[-1]["role"] == "assistant" and messages[-1]["content"]


def test_prepare_demo_instructions_offline(tmp_path):
    assert PrepareConfig(format="instructions").output_dir == Path("data/demo-instructions")
    r = invoke("prepare", "--format", "instructions", "--max-docs", "40", "--vocab-size", "600", "-o", tmp_path / "d")
    assert r.exit_code == 0, r.output
    assert "Instruction examples" in r.stdout and "ChatML" in r.stdout
    ds = PreparedDataset.open(tmp_path / "d")
    assert ds.meta["instructions"]["examples"]["kept"] == 40 and ds.meta["source"]["sources"][0]["kind"] == "demo"


def test_fine_tuning_on_the_demo_instructions_answers_better(tmp_path, one_thread):
    """A tiny base trained on the tales, fine-tuned on questions about them: the loss on the held-out
    answers drops."""
    from conftest import tiny_run

    from gpt2es_cli.data.mixture import open_sources
    from gpt2es_cli.data.prepare import prepare
    from gpt2es_cli.training import train

    text = PrepareConfig(dataset=("demo",), max_bytes=200_000, vocab_size=2048, out=tmp_path / "tales")
    prepare(open_sources(text), text)
    quick = dict(batch_size=8, eval_interval=0, sample_tokens=0, save_interval=0, log_interval=50)
    base = train(tiny_run(tmp_path / "tales", tmp_path / "base", n_positions=512, max_steps=60, **quick)).last_checkpoint
    prepare_to(tmp_path / "qa", "demo", tokenizer=str(base), context=512, max_docs=400, val_fraction=0.1)
    tuned = train(tiny_run(tmp_path / "qa", tmp_path / "tuned", init_from=str(base), max_steps=60, **quick)).last_checkpoint
    source = EvalText.from_dataset(tmp_path / "qa", "val")
    losses = {}
    for name, path in (("base", base), ("tuned", tuned)):
        ckpt = load_checkpoint(path)
        tok = ckpt.tokenizer()
        losses[name] = evaluate_ids(ckpt.build_model(), source.ids_for(tok), tok, mask=source.mask_for(tok)).loss
        assert (tok.chat_template is not None) == (name == "tuned")  # the template came with the data
    assert losses["tuned"] < losses["base"] - 0.5, losses


# --- sample --chat ---------------------------------------------------------------------------


@pytest.fixture
def chat_checkpoint(tmp_path, tiny_model, tiny_config, tiny_tokenizer) -> Path:
    path = tmp_path / "chat.pth"
    save_model(path, tiny_model, tiny_config, tiny_tokenizer.with_chat_template(TEXT_MARKERS))
    return path


def test_chat_loop_answers_each_line(chat_checkpoint):
    r = invoke("sample", chat_checkpoint, "--chat", "--max-new-tokens", "6", "--seed", "0",
               input="¿Dónde vive el niño?\n\n¿Y la niña?\n")
    assert r.exit_code == 0, r.output
    assert r.stdout.count("you>") == 4  # two messages, the blank line, and end of input
    assert "Traceback" not in r.output


def test_chat_with_a_prompt_answers_once(chat_checkpoint):
    r = invoke("sample", chat_checkpoint, "--chat", "-p", "¿Dónde vive el niño?", "--max-new-tokens", "5", "--seed", "0",
               "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [m["role"] for m in out["messages"]] == ["user", "assistant"] and out["tokens"] <= 5
    assert out["messages"][0]["content"] == "¿Dónde vive el niño?"


def test_chat_keeps_the_conversation_within_the_context(chat_checkpoint):
    lines = "".join(f"{q} {q} {q}\n" for q, _ in QUESTIONS)  # the tiny model's context is 64 tokens
    r = invoke("sample", chat_checkpoint, "--chat", "--max-new-tokens", "4", "--seed", "0", input=lines)
    assert r.exit_code == 0, r.output
    assert "oldest messages were dropped" in r.output


def test_chat_needs_a_chat_template(tiny_checkpoint):
    r = invoke("sample", tiny_checkpoint, "--chat", "-p", "hola")
    assert r.exit_code == 1
    assert "no chat template" in r.output and "--format instructions" in r.output
    assert len(r.output.strip().splitlines()) == 1


# --- export: the template in tokenizer_config.json ------------------------------------------------


@pytest.mark.parametrize("template", ["chatml", "text-markers"])
def test_export_apply_chat_template_gives_our_ids(tmp_path, template, tiny_tokenizer):
    from transformers import AutoTokenizer

    from gpt2es_cli.checkpoint import Checkpoint
    from gpt2es_cli.hf.export import export_hf
    from gpt2es_cli.hf.load import load_hf_checkpoint

    if template == "chatml":
        tok = Tokenizer.train([q + a for q, a in QUESTIONS] * 4, 400, min_frequency=1, special_tokens=CHAT_MARKERS)
        tok = tok.with_chat_template(CHATML)
    else:
        tok = tiny_tokenizer.with_chat_template(TEXT_MARKERS)
    config = ModelConfig.from_preset("tiny", vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    model = GPT2(config)
    ckpt = Checkpoint(config, {k: v.detach() for k, v in model.state_dict().items()}, tok.to_json())
    out = export_hf(ckpt, tmp_path / "hf")
    hf = AutoTokenizer.from_pretrained(out)
    messages = [{"role": "system", "content": "Sé breve."}, {"role": "user", "content": QUESTIONS[0][0]},
                {"role": "assistant", "content": QUESTIONS[0][1]}, {"role": "user", "content": QUESTIONS[1][0]}]
    theirs = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    theirs = theirs["input_ids"] if hasattr(theirs, "keys") else theirs
    assert list(theirs) == encode_chat(tok, messages, add_generation_prompt=True)[0]
    full = [*messages, {"role": "assistant", "content": QUESTIONS[1][1]}]
    marked = hf.apply_chat_template(full, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = encode_chat(tok, full)
    assert list(marked["input_ids"]) == ids and list(marked["assistant_masks"]) == mask.tolist()
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == (tok.eos_id if template == "text-markers" else [tok.eos_id, end_of_turn_id(tok)])
    assert "chat_template" not in json.loads((out / "tokenizer.json").read_text())
    assert load_hf_checkpoint(out).tokenizer().chat_template == tok.chat_template  # read back


# --- bad input ---------------------------------------------------------------------------------


BAD_LINES = [
    {"instruction": "¿Dónde vive el niño?", "output": "En un pueblo."},
    "esto no es JSON",
    "[1, 2, 3]",
    {"texto": "sin formato"},
    {"instruction": "¿Qué?"},
    {"messages": [{"role": "bot", "content": "hola"}]},
    {"instruction": "¿Qué?", "output": "  "},
    {"instruction": "Cuenta una historia muy larga. " * 30, "output": "No."},
    {"messages": [{"role": "user", "content": "¿Qué tal?"}, {"role": "assistant", "content": "Bien."}]},
    {"instruction": "¿Dónde vive el niño?", "output": "En un pueblo."},
    "",
    {"instruction": "¿Y la niña?", "input": "", "output": "En la ciudad."},
]


def test_bad_input_is_counted_by_kind(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save(tmp_path / "tok.json")
    source = write_jsonl(tmp_path / "malo.jsonl", BAD_LINES)
    r = invoke("prepare", "--format", "instructions", "-d", source, "--tokenizer", tmp_path / "tok.json",
               "--context", "64", "--val-fraction", "0.3", "-o", tmp_path / "d")
    assert r.exit_code == 0, r.output
    counts = PreparedDataset.open(tmp_path / "d").meta["instructions"]["examples"]
    assert counts == {"read": 11, "alpaca": 4, "messages": 1, "not_an_object": 2, "missing_field": 2,
                      "bad_messages": 1, "empty_answer": 1, "too_long": 1, "duplicates": 1, "kept": 3}
    for label in ("not a JSON object", "missing or non-text field", "malformed messages", "empty answer",
                  "longer than --context", "exact duplicates"):
        assert label in r.stdout


def test_strict_stops_at_the_first_bad_line(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save(tmp_path / "tok.json")
    source = write_jsonl(tmp_path / "malo.jsonl", BAD_LINES)
    r = invoke("prepare", "--format", "instructions", "-d", source, "--tokenizer", tmp_path / "tok.json", "--strict",
               "-o", tmp_path / "d")
    assert r.exit_code == 1
    assert f"{source} line 2 is not JSON" in r.output and "--strict" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "d").exists()
    long_only = write_jsonl(tmp_path / "largo.jsonl", [BAD_LINES[0], BAD_LINES[7]])
    r = invoke("prepare", "--format", "instructions", "-d", long_only, "--tokenizer", tmp_path / "tok.json",
               "--strict", "--context", "64", "-o", tmp_path / "d")
    assert r.exit_code == 1 and "line 2 is" in r.output and "more than --context 64" in r.output


def test_unusable_sources_are_one_line_errors(tmp_path):
    empty = write_jsonl(tmp_path / "vacio.jsonl", ["[1]", {"a": 1}])
    r = invoke("prepare", "--format", "instructions", "-d", empty, "--vocab-size", "300", "-o", tmp_path / "d")
    assert r.exit_code == 1 and r.output.count("error:") == 1
    assert "no usable example in its training split: of 2 records, 1 not an object, 1 missing field" in r.output
    (tmp_path / "libro.txt").write_text("Había una vez.\n", encoding="utf-8")
    r = invoke("prepare", "--format", "instructions", "-d", tmp_path / "libro.txt", "-o", tmp_path / "d")
    assert r.exit_code == 1 and ".jsonl" in r.output
    r = invoke("prepare", "--format", "instructions", "-d", "demo:0.5", "-d", "x.jsonl:0.5", "-o", tmp_path / "d")
    assert r.exit_code == 1 and "without weights" in r.output


def test_a_json_array_and_a_hub_dataset_are_read_too(tmp_path, tiny_tokenizer, monkeypatch):
    from gpt2es_cli.data.sources import HubSource

    tiny_tokenizer.save(tmp_path / "tok.json")
    (tmp_path / "alpaca.json").write_text(json.dumps(examples(12), ensure_ascii=False), encoding="utf-8")
    r = prepare_to(tmp_path / "a", tmp_path / "alpaca.json", tokenizer=str(tmp_path / "tok.json"), val_fraction=0.2)
    assert r.meta["instructions"]["examples"]["kept"] == 12
    monkeypatch.setattr(HubSource, "_open", lambda self: iter(examples(12)))
    r = prepare_to(tmp_path / "h", "someone/alpaca-es", tokenizer=str(tmp_path / "tok.json"), val_fraction=0.2)
    assert r.meta["instructions"]["examples"]["kept"] == 12 and r.meta["source"]["sources"][0]["kind"] == "hub"
