"""--push-to-hub: the run's best checkpoint exported to RUN/hf and uploaded to a Hub model repo.

`train()` attaches a `HubPush` when the setting is given (once hub.check_push_target has refused
a push that cannot happen, before anything is written): with --push-every-save it uploads after
each save of last.pth, and a failed upload then is an `UploadFailed` event (the run goes on); at
the end `train()` pushes once more, and a failure then is an error (the run and RUN/hf stay).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gpt2es_cli.errors import CheckpointError, Gpt2esError
from gpt2es_cli.training.events import Event, Saved, TrainStart, UploadFailed

EXPORT_DIR = "hf"
"""The run's export, inside its directory."""


class HubPush:
    """Uploads the run's best checkpoint (else last.pth), exported, to `repo_id`."""

    def __init__(self, repo_id: str, every_save: bool, notify: Callable[[Event], None]):
        self.repo_id = repo_id
        self.every_save = every_save
        self.notify = notify
        """Where this sends the events of its own (the run's subscribers)."""
        self.run_dir: Path | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, TrainStart):
            self.run_dir = event.run_dir
        elif isinstance(event, Saved) and not event.best and self.every_save:
            try:
                self.push(f"step {event.step}")
            except Gpt2esError as e:
                self.notify(UploadFailed(step=event.step, message=str(e)))

    def push(self, what: str) -> str:
        """Export and upload the run as it is now (`what`: for the commit message); return the repo's URL."""
        from gpt2es_cli.artifacts import open_checkpoint, run_checkpoint
        from gpt2es_cli.hf import export_hf
        from gpt2es_cli.hub import push_folder

        source = run_checkpoint(self.run_dir) if self.run_dir is not None else None
        if source is None:
            raise CheckpointError(f"{self.run_dir or 'the run'} holds no checkpoint to push to {self.repo_id}")
        folder = export_hf(open_checkpoint(source), source.parent / EXPORT_DIR, force=True)
        return push_folder(folder, self.repo_id, message=f"gpt2es: {source.name} at {what}")
