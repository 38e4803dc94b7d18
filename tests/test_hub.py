"""Hub model ids (owner/name[@revision]) as CHECKPOINT, --init-from and prepare --tokenizer,
resolved from a real Hugging Face cache layout built on disk, with HF_HUB_OFFLINE=1: the cache
works, a model not in it is one line saying how to get it, and nothing touches the network."""

import shutil

import pytest
import torch
from typer.testing import CliRunner

from gpt2es_cli.artifacts import open_checkpoint, open_tokenizer
from gpt2es_cli.checkpoint import Checkpoint
from gpt2es_cli.cli import app
from gpt2es_cli.config import ModelConfig
from gpt2es_cli.errors import CheckpointError
from gpt2es_cli.hf import export_hf
from gpt2es_cli.hub import is_hub_id, split_id
from gpt2es_cli.model import GPT2

pytest.importorskip("huggingface_hub")
pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
REPO = "gpt2es-tests/tiny-es"
REVISION = "0123456789abcdef0123456789abcdef01234567"
OLD_REVISION = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture
def hub_cache(tmp_path, tiny_tokenizer, monkeypatch):
    """A Hugging Face cache holding REPO at REVISION (main) and OLD_REVISION (tag v0), as
    snapshot_download lays it out; the Hub itself is off."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    repo_dir = cache / ("models--" + REPO.replace("/", "--"))
    models = {}
    for revision, seed in ((REVISION, 0), (OLD_REVISION, 1)):
        torch.manual_seed(seed)
        model = GPT2(ModelConfig.from_preset("tiny", vocab_size=tiny_tokenizer.vocab_size))
        exported = export_hf(Checkpoint(model.config, model.state_dict(), tiny_tokenizer.to_json()),
                             tmp_path / f"export-{seed}")
        shutil.copytree(exported, repo_dir / "snapshots" / revision)
        models[revision] = model
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(REVISION)
    (repo_dir / "refs" / "v0").write_text(OLD_REVISION)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return models


def test_hub_ids_are_told_from_paths(tmp_path, monkeypatch):
    assert is_hub_id("DeepESP/gpt2-spanish") and is_hub_id("openai-community/gpt2@main")
    assert not is_hub_id("runs/demo/best.pth") and not is_hub_id("a/b/c") and not is_hub_id("gpt2")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner" / "name").mkdir(parents=True)
    assert not is_hub_id("owner/name")  # a local directory of that name wins
    assert split_id("owner/name@v1.0") == ("owner/name", "v1.0") and split_id("owner/name") == ("owner/name", None)


def test_a_cached_hub_model_opens_offline_at_any_revision(hub_cache):
    for spec, revision in ((REPO, REVISION), (f"{REPO}@v0", OLD_REVISION), (f"{REPO}@{OLD_REVISION}", OLD_REVISION)):
        ckpt = open_checkpoint(spec)
        assert ckpt.source == "huggingface" and ckpt.path.name == revision
        for key, value in hub_cache[revision].state_dict().items():
            assert torch.equal(ckpt.model_state[key], value), (spec, key)
    assert open_tokenizer(REPO).vocab_size == hub_cache[REVISION].config.vocab_size


def test_a_model_not_in_the_cache_is_one_line_saying_how_to_get_it(hub_cache):
    with pytest.raises(CheckpointError, match=r"not in the Hugging Face cache.*hf download DeepESP/gpt2-spanish"):
        open_checkpoint("DeepESP/gpt2-spanish")
    with pytest.raises(CheckpointError, match="at revision v9"):
        open_checkpoint(f"{REPO}@v9")
    result = runner.invoke(app, ["sample", "DeepESP/gpt2-spanish"])
    assert result.exit_code == 1 and result.stderr.count("error:") == 1 and "hf download" in result.stderr


def test_every_command_takes_a_hub_id(hub_cache, tmp_path, train_dataset, tiny_tokenizer):
    sample = runner.invoke(app, ["sample", REPO, "--max-new-tokens", "4", "--device", "cpu", "--seed", "0", "--json"])
    assert sample.exit_code == 0, sample.output
    evaluated = runner.invoke(app, ["eval", REPO, "--data", str(train_dataset), "--json", "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    shown = runner.invoke(app, ["inspect", f"{REPO}@v0", "--json"])
    assert shown.exit_code == 0 and OLD_REVISION in shown.stdout
    exported = runner.invoke(app, ["export", REPO, str(tmp_path / "copy")])
    assert exported.exit_code == 0 and (tmp_path / "copy" / "model.safetensors").exists()
    tuned = runner.invoke(app, ["train", "-d", str(train_dataset), "-o", str(tmp_path / "ft"), "--init-from", REPO,
                                "--max-steps", "2", "-b", "2", "--device", "cpu", "--sample-tokens", "0"])
    assert tuned.exit_code == 0, tuned.output
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("Había una vez un niño que soñaba con el mar.\n\nY el mar lo llamaba.\n" * 20)
    prepared = runner.invoke(app, ["prepare", "-d", str(texts), "-o", str(tmp_path / "prepared"), "--tokenizer", REPO])
    assert prepared.exit_code == 0, prepared.output
    assert open_tokenizer(tmp_path / "prepared").to_json() == tiny_tokenizer.to_json()


def test_revision_options_pick_the_snapshot_and_misuse_is_one_line(hub_cache, tmp_path, train_dataset):
    shown = runner.invoke(app, ["inspect", REPO, "--revision", "v0", "--json"])
    assert shown.exit_code == 0 and OLD_REVISION in shown.stdout
    assert runner.invoke(app, ["inspect", f"{REPO}@v0", "--revision", "v0", "--json"]).exit_code == 0
    sample = runner.invoke(app, ["sample", REPO, "--revision", OLD_REVISION, "--max-new-tokens", "2",
                                 "--device", "cpu", "--json"])
    assert sample.exit_code == 0, sample.output
    tuned = runner.invoke(app, ["train", "-d", str(train_dataset), "-o", str(tmp_path / "ft"), "--init-from", REPO,
                                "--revision", "v0", "--max-steps", "1", "-b", "2", "--device", "cpu",
                                "--sample-tokens", "0"])
    assert tuned.exit_code == 0, tuned.output
    assert "revision: v0" in (tmp_path / "ft" / "config.yaml").read_text()
    for args, message in (
        (["inspect", f"{REPO}@v0", "--revision", "main"], "names revision v0 and --revision main"),
        (["inspect", str(train_dataset), "--revision", "v0"], "is for a Hugging Face Hub model id"),
        (["sample", "--revision", "v0"], "--revision is for a Hugging Face Hub model id given as CHECKPOINT"),
        (["train", "-d", str(train_dataset), "--revision", "v0"], "--revision is for a Hub model id given to --init-from"),
        (["prepare", "--tokenizer-revision", "v0", "-o", str(tmp_path / "p")], "--tokenizer-revision is for"),
        (["inspect", REPO, "--revision", "a b"], "not a branch, tag or commit"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and result.stderr.count("error:") == 1 and message in result.stderr, (
            args, result.output)
