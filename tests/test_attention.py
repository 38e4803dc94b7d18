"""`gpt2es inspect --attention`: the weights are the model's own, the grid is drawn, the CLI reports them."""

import json
import struct

import pytest
import torch
from typer.testing import CliRunner

from gpt2es_cli.attention import attention_map, layout, plot_attention
from gpt2es_cli.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, save_model
from gpt2es_cli.cli import app
from gpt2es_cli.config import ModelConfig
from gpt2es_cli.model import GPT2

runner = CliRunner()
TEXT = "El perro corre"


def png_size(path):
    """Width and height from a PNG's header."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def sharp_model(config):
    """A model whose heads attend sharply (larger q, k weights than the init's 0.02): a wrong mask
    or a wrong softmax changes its outputs a lot."""
    torch.manual_seed(0)
    model = GPT2(config).eval()
    with torch.no_grad():
        for block in model.h:
            block.attn.c_attn.weight.normal_(0.0, 0.5)
    return model


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope"])
def test_the_weights_and_v_give_the_model_s_own_attention_output(position, tiny_tokenizer):
    model = sharp_model(ModelConfig.from_preset("tiny", vocab_size=tiny_tokenizer.vocab_size, position=position))
    seen = []  # per layer: the attention's input, rotary angles and output in the model's own forward pass
    hooks = [block.attn.register_forward_hook(lambda m, args, out: seen.append((args[0], args[3], out)))
             for block in model.h]
    idx = torch.randint(0, tiny_tokenizer.vocab_size, (2, 12))
    with torch.no_grad():
        model(idx)
    for hook in hooks:
        hook.remove()
    weights = model.attention_weights(idx)
    assert len(weights) == model.config.n_layer and len(seen) == model.config.n_layer
    for block, w, (x, rope, out) in zip(model.h, weights, seen, strict=True):
        assert w.shape == (2, model.config.n_head, 12, 12) and w.dtype == torch.float32
        assert (rope is not None) == (position == "rope")
        _, _, v = block.attn.heads(x, rope)  # (B, nh, T, hs)
        y = (w @ v).transpose(1, 2).reshape(x.shape)  # (B, T, C)
        torch.testing.assert_close(block.attn.c_proj(y), out, atol=1e-5, rtol=0)
    assert max(w.max().item() for w in weights) > 0.9  # sharp: the check above had something to catch


def test_each_row_sums_to_one_and_the_future_is_exactly_zero(tiny_checkpoint, tiny_tokenizer):
    found = attention_map(load_checkpoint(tiny_checkpoint), TEXT)
    T = len(tiny_tokenizer.encode(TEXT))
    assert found.tokens == tiny_tokenizer.token_strings(tiny_tokenizer.encode(TEXT)) and "".join(found.tokens) == TEXT
    assert found.weights.shape == (2, 2, T, T) and not found.truncated
    torch.testing.assert_close(found.weights.sum(-1), torch.ones(2, 2, T), atol=1e-6, rtol=0)
    future = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)
    assert (found.weights[..., future] == 0).all() and (found.weights[..., ~future] > 0).all()
    assert found.weights[:, :, 0, 0].eq(1).all()  # the first token has only itself to look at
    strongest = found.strongest()
    for layer in range(2):
        for head in range(2):
            for i, focus in enumerate(strongest[layer][head]):
                assert focus.position <= i and focus.weight == pytest.approx(found.weights[layer, head, i].max().item())


def test_the_png_is_a_grid_of_layers_by_heads(tmp_path, tiny_tokenizer):
    sizes = {}
    for n_layer, n_head in ((2, 2), (3, 4)):
        config = ModelConfig(n_positions=32, n_layer=n_layer, n_head=n_head, n_embd=8 * n_head,
                             vocab_size=tiny_tokenizer.vocab_size)
        checkpoint = Checkpoint(config, GPT2(config).state_dict(), tiny_tokenizer.to_json())
        found = attention_map(checkpoint, TEXT, source="tiny.pth")
        path = plot_attention(found, tmp_path / f"{n_layer}x{n_head}" / "attention.png")  # a new folder too
        assert path.is_file() and not list(path.parent.glob(".*.tmp"))  # written whole, no temp file left
        grid = layout(found)
        width, height = png_size(path)
        assert abs(width - grid.pixels[0]) <= 1 and abs(height - grid.pixels[1]) <= 1
        sizes[n_layer, n_head] = grid
    small, big = sizes[2, 2], sizes[3, 4]
    assert small.dpi == big.dpi == 100 and small.pitch == big.pitch  # same tokens: same cells
    assert big.inches[0] - small.inches[0] == pytest.approx(2 * small.pitch[0])  # two more heads across
    assert big.inches[1] - big.header - (small.inches[1] - small.header) == pytest.approx(small.pitch[1])  # a layer


def test_the_cli_table_and_the_image(tiny_checkpoint, tmp_path, tiny_tokenizer, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["inspect", str(tiny_checkpoint), "--attention", TEXT])
    assert r.exit_code == 0, r.output
    assert png_size(tmp_path / "attention.png")  # the default: attention.png where the command runs
    out = r.stdout
    assert f"Attention of {tiny_checkpoint}" in out and "2 layers x 2 heads" in out
    assert "layer 0" in out and "layer 1" in out and "head 0" in out and "head 1" in out
    for token in tiny_tokenizer.token_strings(tiny_tokenizer.encode(TEXT)):
        assert token.replace(" ", "·") in out
    assert "El 1.00" in out  # position 0 attends only to itself
    assert out.rstrip().endswith("heatmaps: attention.png")


def test_many_heads_make_compact_cells_and_share_tables_out(tmp_path, tiny_tokenizer, monkeypatch):
    config = ModelConfig(n_positions=32, n_layer=1, n_head=8, n_embd=64, vocab_size=tiny_tokenizer.vocab_size)
    path = tmp_path / "wide.pth"
    save_checkpoint(path, Checkpoint(config, GPT2(config).state_dict(), tiny_tokenizer.to_json()))
    command = ["inspect", str(path), "--attention", TEXT, "--image", str(tmp_path / "a.png")]
    for columns, tables, first_row in (
        (200, ["layer 0"], ["0", "El", *["El 1.00"] * 8]),  # wide enough: the tokens
        (80, ["layer 0 (heads 0-3)", "layer 0 (heads 4-7)"], ["0", "El", *["0 1.00"] * 4]),  # positions, 2 tables
    ):
        monkeypatch.setenv("COLUMNS", str(columns))
        r = runner.invoke(app, command)
        assert r.exit_code == 0, r.output
        assert [line.strip() for line in r.stdout.splitlines() if line.startswith("layer")] == tables
        rows = [[c.strip() for c in line.split("│")[1:-1]] for line in r.stdout.splitlines() if line.startswith("│ 0 │")]
        assert rows == [first_row] * len(tables)  # position 0 attends to position 0, all of it
        assert ("head 7" in r.stdout) == (columns == 200) and ("position (#)" in r.stdout) == (columns == 80)
        assert max(len(line) for line in r.stdout.splitlines() if line[:1] in "┏┃┡│└") <= columns


def test_the_cli_json(tiny_checkpoint, tmp_path, tiny_tokenizer):
    image = tmp_path / "perro.png"
    r = runner.invoke(app, ["inspect", str(tiny_checkpoint), "--attention", TEXT, "--image", str(image), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    ids = tiny_tokenizer.encode(TEXT)
    T = len(ids)
    assert [t["id"] for t in data["tokens"]] == ids and "".join(t["text"] for t in data["tokens"]) == TEXT
    assert data["image"] == str(image) and png_size(image)
    assert (data["layers"], data["heads"], data["text"], data["truncated"]) == (2, 2, TEXT, False)
    assert data["checkpoint"] == str(tiny_checkpoint)
    weights = data["weights"]
    assert [len(weights), len(weights[0]), len(weights[0][0]), len(weights[0][0][0])] == [2, 2, T, T]
    expected = attention_map(load_checkpoint(tiny_checkpoint), TEXT).weights
    torch.testing.assert_close(torch.tensor(weights), expected, atol=1e-6, rtol=0)
    for layer in range(2):
        for head in range(2):
            for i, row in enumerate(weights[layer][head]):
                assert sum(row) == pytest.approx(1.0, abs=1e-5) and all(w == 0 for w in row[i + 1:])
                best = data["strongest"][layer][head][i]
                assert row[best["position"]] == best["weight"] == max(row)


def test_a_text_longer_than_the_context_is_cut_with_a_warning(tiny_checkpoint, tmp_path, tiny_tokenizer):
    text = "Había una vez un niño que vivía en un pueblo pequeño junto al río. " * 6
    assert len(tiny_tokenizer.encode(text)) > 64
    r = runner.invoke(app, ["inspect", str(tiny_checkpoint), "--attention", text, "--image", str(tmp_path / "a.png"),
                            "--json"])
    assert r.exit_code == 0, r.output
    assert "warning:" in r.stderr and "more than the model's context of 64: showing the first 64" in r.stderr
    data = json.loads(r.stdout)
    assert len(data["tokens"]) == 64 and data["truncated"] and data["text_tokens"] > 64
    assert len(data["weights"][0][0]) == 64


def one_line_error(r, expected):
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert expected in r.stderr, r.stderr


def test_one_line_errors(tmp_path, tiny_checkpoint, tiny_model, tiny_config):
    bare = tmp_path / "bare.pth"
    save_model(bare, tiny_model, tiny_config, None)
    image = str(tmp_path / "a.png")
    one_line_error(runner.invoke(app, ["inspect", str(bare), "--attention", TEXT, "--image", image]),
                   "carries no tokenizer, so the text cannot be split into its tokens")
    one_line_error(runner.invoke(app, ["inspect", str(tiny_checkpoint), "--attention", "", "--image", image]),
                   "the text to look at is empty")
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    one_line_error(runner.invoke(app, ["inspect", str(tiny_checkpoint), "--attention", TEXT,
                                       "--image", str(tmp_path / "notes.txt" / "a.png")]),
                   "notes.txt is a file, not a directory")
    one_line_error(runner.invoke(app, ["inspect", str(tiny_checkpoint), "--attention", TEXT, "--image", str(tmp_path)]),
                   "give a path ending in .png")
    (tmp_path / "folder.png").mkdir()
    one_line_error(runner.invoke(app, ["inspect", str(tiny_checkpoint), "--attention", TEXT,
                                       "--image", str(tmp_path / "folder.png")]), "it is a directory")
    one_line_error(runner.invoke(app, ["inspect", str(tiny_checkpoint), "--attention", TEXT, "--tokenizer"]),
                   "give it without --tokenizer and --verify")
    one_line_error(runner.invoke(app, ["inspect", str(tiny_checkpoint), "--image", image]),
                   "--image says where --attention draws")
    assert not (tmp_path / "a.png").exists()
