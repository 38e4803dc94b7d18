"""--log-to wandb: the run's metrics in Weights & Biases, through the `wandb` library.

The same scalars as TensorBoard (train/loss, train/smoothed_loss, train/lr, train/grad_norm,
train/grad_clip, train/tokens_per_second, train/mfu, val/loss, val/perplexity) at the optimizer
step, with `tokens` logged beside them as a second x axis, each evaluation's sample as HTML, and
the resolved settings as the run's config. Project and run name: --wandb-project and
--wandb-name (default: gpt2es and the run directory's name). `WANDB_MODE=offline` logs to
RUN/wandb only (`wandb sync` uploads it later); online without an API key is refused before
training starts, never an interactive prompt.

The W&B run id and the last step it logged are kept in RUN/wandb-run.json. A resumed run
continues the same W&B run and skips the steps the stopped invocation already logged: resume is
exact, so those steps would log the same values again, and W&B refuses a step lower than the
last. A new run (or --force) starts a new W&B run.
"""

from __future__ import annotations

import html
import json
import math
import netrc
import os
import secrets
import string
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from gpt2es_cli.errors import ConfigError
from gpt2es_cli.fileio import atomic_write
from gpt2es_cli.training.events import Event, StepReport, TrainEnd, TrainStart, ValidationDone

EXTRA = "pip install 'gpt2es[wandb]'"
STATE_FILE = "wandb-run.json"
"""In the run directory: {"id": W&B run id, "project": ..., "train": and "eval": the last step of each logged}."""
LOCAL_MODES = ("offline", "dryrun", "disabled")
TRAIN_SCALARS = ("loss", "smoothed_loss", "lr", "grad_norm", "grad_clip", "tokens_per_second", "mfu")


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None and (not isinstance(v, float) or math.isfinite(v))}


def _new_run_id() -> str:
    """An id for a new W&B run: 8 random lowercase letters and digits, as W&B makes them."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _has_credentials(wandb: Any) -> bool:
    """Whether W&B has an API key (or identity token) to log in with, never prompting for one."""
    try:
        return bool(wandb.login(prompt=False, verify=False))
    except TypeError:  # wandb before `prompt`: look where it looks, without logging in
        if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
            return True
        host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
        try:
            return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
        except (OSError, netrc.NetrcParseError):
            return False


class WandbLog:
    """A W&B run, continued across resumes (RUN/wandb-run.json keeps its id)."""

    @staticmethod
    def where(run_dir: Path) -> str:
        offline = os.environ.get("WANDB_MODE") == "offline"
        return str(run_dir / "wandb") + (f" (offline: wandb sync {run_dir / 'wandb'}/offline-run-*)" if offline else "")

    def __init__(self) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError(f"--log-to wandb needs the wandb package: {EXTRA}") from None
        self.wandb = wandb
        if os.environ.get("WANDB_MODE", "").lower() not in LOCAL_MODES and not _has_credentials(wandb):
            raise ConfigError(
                "--log-to wandb: no W&B API key; run `wandb login` (or set WANDB_API_KEY), or set "
                "WANDB_MODE=offline to log in the run directory and `wandb sync` it later"
            )
        self.run: Any = None
        self.state_path: Path | None = None
        self.state: dict[str, Any] = {}

    def __call__(self, event: Event) -> None:
        if isinstance(event, TrainStart):
            self._start(event)
        elif self.run is None:
            return
        elif isinstance(event, StepReport) and event.logged:
            values = {f"train/{name}": getattr(event, name) for name in TRAIN_SCALARS}
            self._log(event.step, {**values, "tokens": event.tokens_seen}, "train")
        elif isinstance(event, ValidationDone):
            values: dict[str, Any] = {"val/loss": event.val_loss, "val/perplexity": event.val_perplexity,
                                      "tokens": event.tokens_seen}
            if event.sample is not None:
                values["sample"] = self.wandb.Html(f"<pre>{html.escape(event.sample)}</pre>")
            self._log(event.step, values, "eval")
        elif isinstance(event, TrainEnd):
            s = event.summary
            self.run.summary.update(_finite({"stop_reason": s.stop_reason, "best_val_loss": s.best_val_loss,
                                             "final_loss": s.final_loss, "tokens_seen": s.tokens_seen}))
            self.run.finish()
            self.run = None

    def _log(self, step: int, values: dict[str, Any], kind: str) -> None:
        """Log at `step` unless an earlier invocation of this run already logged this kind of record
        (train or eval) there or later."""
        if step <= self.state.get(kind, 0):
            return
        self.run.log(_finite(values), step=step)
        self.state[kind] = step
        self._save_state()

    def _save_state(self) -> None:
        assert self.state_path is not None
        text = json.dumps(self.state).encode()
        atomic_write(self.state_path, lambda f: f.write(text))

    def _start(self, event: TrainStart) -> None:
        config = event.config
        self.state_path = event.run_dir / STATE_FILE
        previous: dict[str, Any] = {}
        if event.start_step and self.state_path.is_file():
            try:
                previous = json.loads(self.state_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                previous = {}
        run_id = previous.get("id") if isinstance(previous.get("id"), str) else _new_run_id()
        project = config.wandb_project or previous.get("project") or "gpt2es"
        self.state = {"id": run_id, "project": project}
        if previous.get("id") == run_id:
            self.state.update({k: previous[k] for k in ("train", "eval") if isinstance(previous.get(k), int)})
        try:
            self.run = self.wandb.init(
                project=project,
                name=config.wandb_name or event.run_dir.resolve().name,
                id=run_id,
                resume="allow",
                dir=str(event.run_dir),
                config=config.to_dict(),
                settings=self.wandb.Settings(silent=True, console="off"),
            )
        except Exception as e:  # network, permissions, a bad project name: W&B's own words
            raise ConfigError(f"--log-to wandb could not start a W&B run: {str(e).strip() or type(e).__name__}; "
                              "WANDB_MODE=offline logs locally") from e
        self._save_state()
