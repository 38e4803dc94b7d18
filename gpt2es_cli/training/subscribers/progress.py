"""Progress for Python callers: `train(config, subscribers=[TqdmProgress()])` in a script or a
notebook shows a tqdm bar (tqdm.auto: a widget in Jupyter, text elsewhere) with the loss, the
learning rate and tokens/s, and writes each evaluation above it. The library never prints on its
own; this subscriber is what a caller adds to see a run the way the CLI's display shows it.
"""

from __future__ import annotations

from typing import Any

from gpt2es_cli.training.events import Event, StepReport, TrainEnd, TrainStart, ValidationDone


class TqdmProgress:
    def __init__(self, **tqdm_options: Any) -> None:
        self.options = tqdm_options
        self.bar: Any = None

    def __call__(self, event: Event) -> None:
        from tqdm.auto import tqdm

        if isinstance(event, TrainStart):
            self.bar = tqdm(total=event.total_steps, initial=event.start_step, unit="step",
                            desc=str(event.run_dir), **self.options)
        elif self.bar is None:
            return
        elif isinstance(event, StepReport):
            self.bar.total = event.total_steps  # a --max-time plan can change it
            self.bar.update(event.step - self.bar.n)
            self.bar.set_postfix(loss=f"{event.loss:.4f}", lr=f"{event.lr:.2e}", tok_s=f"{event.tokens_per_second:,.0f}")
        elif isinstance(event, ValidationDone):
            self.bar.write(f"step {event.step}: val loss {event.val_loss:.4f} (ppl {event.val_perplexity:.2f})", file=self.bar.fp)
        elif isinstance(event, TrainEnd):
            self.bar.close()
            self.bar = None
