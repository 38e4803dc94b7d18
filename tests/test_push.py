"""--push-to-hub (export and train): refused before any work without a token, offline or with a bad
repo id; otherwise the export is uploaded with HfApi (faked here: tests never reach the network),
and a failed upload is one line that leaves the local export."""

import pytest
from typer.testing import CliRunner

from gpt2es_cli.cli import app
from gpt2es_cli.errors import CheckpointError
from gpt2es_cli.hub import check_push_target

pytest.importorskip("huggingface_hub")
pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


@pytest.fixture
def online(monkeypatch):
    """A token and the Hub 'on' (HF_HUB_OFFLINE off), with HfApi replaced by a recorder."""
    import huggingface_hub
    import huggingface_hub.constants as constants

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None):
            calls.append(("create", repo_id, private))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, folder_path, repo_id, repo_type=None, commit_message=""):
            from pathlib import Path

            calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
            if repo_id.endswith("/broken"):
                raise OSError("503 Service Unavailable")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return calls


def test_a_push_that_cannot_happen_is_refused_up_front(monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants as constants

    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set"):
        check_push_target("me/model")  # the tests run offline
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(CheckpointError, match="needs a Hugging Face token"):
        check_push_target("me/model")
    for bad in ("model", "me/model@main", "me/bad name"):
        with pytest.raises(CheckpointError, match="repo id"):
            check_push_target(bad)


def test_export_pushes_the_folder_and_a_failed_upload_keeps_it(online, tmp_path, tiny_checkpoint):
    result = runner.invoke(app, ["export", str(tiny_checkpoint), str(tmp_path / "hf"), "--push-to-hub", "me/tiny",
                                 "--private"])
    assert result.exit_code == 0, result.output
    assert online[0] == ("create", "me/tiny", True)
    assert online[1][0] == "upload" and {"config.json", "model.safetensors", "README.md"} <= set(online[1][2])
    assert "uploaded to https://huggingface.co/me/tiny" in result.stdout
    failed = runner.invoke(app, ["export", str(tiny_checkpoint), str(tmp_path / "hf2"), "--push-to-hub", "me/broken"])
    assert failed.exit_code == 1 and failed.stderr.count("error:") == 1 and "the local copy is intact" in failed.stderr
    assert (tmp_path / "hf2" / "model.safetensors").exists()


def test_export_without_a_token_writes_nothing(tmp_path, tiny_checkpoint):
    result = runner.invoke(app, ["export", str(tiny_checkpoint), str(tmp_path / "hf"), "--push-to-hub", "me/tiny"])
    assert result.exit_code == 1 and "HF_HUB_OFFLINE" in result.stderr and not (tmp_path / "hf").exists()


def train_pushing(dataset, run, repo_id):
    """`gpt2es train` of 4 steps, saving and evaluating every 2, uploading to `repo_id` at every save."""
    return runner.invoke(app, ["train", "-d", str(dataset), "-o", str(run), "-p", "tiny", "-b", "2", "--max-steps", "4",
                               "--save-interval", "2", "--eval-interval", "2", "--sample-tokens", "0", "--device", "cpu",
                               "--push-to-hub", repo_id, "--push-every-save"])


def test_train_pushes_at_every_save_and_at_the_end(online, train_dataset, tmp_path):
    result = train_pushing(train_dataset, tmp_path / "run", "me/run")
    assert result.exit_code == 0, result.output
    uploads = [c for c in online if c[0] == "upload"]
    assert len(uploads) == 3  # after the saves at steps 2 and 4, then at the end
    assert (tmp_path / "run" / "hf" / "model.safetensors").exists()


def test_train_without_a_token_is_refused_before_training(train_dataset, tmp_path):
    result = runner.invoke(app, ["train", "-d", str(train_dataset), "-o", str(tmp_path / "run"), "-p", "tiny",
                                 "--max-steps", "2", "--push-to-hub", "me/run"])
    assert result.exit_code == 1 and "HF_HUB_OFFLINE" in result.stderr and not (tmp_path / "run").exists()


def test_train_from_python_pushes_when_its_settings_ask(online, train_dataset, tmp_path):
    """push_to_hub is a TrainConfig setting: train(config) uploads at the end without the CLI."""
    from conftest import tiny_run

    from gpt2es_cli.training import UploadFailed, train

    events = []
    config = tiny_run(train_dataset, tmp_path / "run", max_steps=4, sample_tokens=0, push_to_hub="me/run",
                      push_every_save=True)
    summary = train(config, subscribers=[events.append])
    uploads = [c for c in online if c[0] == "upload"]
    assert len(uploads) == 2 and summary.hub_url == "https://huggingface.co/me/run"  # the save at step 4, the end
    assert not [e for e in events if isinstance(e, UploadFailed)]
    assert {"config.json", "model.safetensors", "README.md"} <= set(uploads[-1][2])


def test_failed_uploads_warn_during_the_run_and_fail_once_at_the_end(online, train_dataset, tmp_path):
    result = train_pushing(train_dataset, tmp_path / "run", "me/broken")
    assert result.exit_code == 1, result.output
    assert result.stderr.count("warning:") == 2 and result.stderr.count("error:") == 1  # saves at 2 and 4; the end
    assert "the local copy is intact" in result.stderr.splitlines()[-1]
    assert "checkpoint" in result.stdout and "uploaded" not in result.stdout  # the summary, then the error
    assert (tmp_path / "run" / "last.pth").exists() and (tmp_path / "run" / "hf" / "model.safetensors").exists()
