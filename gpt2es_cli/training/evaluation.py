"""Evaluation while training: the loss on fixed validation windows, and the sample shown with it.

Every evaluation scores the same windows (as many batches as the step plan says), so validation
losses compare across the run and across resumes; each process scores its share of the batches
and the sums are reduced. The sample, a continuation of --sample-prompt, is made on the main
process only.
"""

from __future__ import annotations

import numpy as np
import torch

from gpt2es_cli.config import TrainConfig
from gpt2es_cli.data.batches import TokenWindows, fixed_windows
from gpt2es_cli.data.dataset import PreparedDataset
from gpt2es_cli.data.shards import MergedDataset
from gpt2es_cli.device import Precision
from gpt2es_cli.generate import GenerationConfig, generate
from gpt2es_cli.loss import scored_count
from gpt2es_cli.model import GPT2
from gpt2es_cli.tokenizer import Tokenizer
from gpt2es_cli.training.parallel import Parallel


class Evaluator:
    """Scores the validation split of `dataset` (of all its shards, one after another, for a corpus
    prepared in shards) with the model `parallel` wraps."""

    def __init__(self, config: TrainConfig, dataset: PreparedDataset | MergedDataset, tokenizer: Tokenizer,
                 parallel: Parallel, precision: Precision):
        self.config = config
        self.tokenizer = tokenizer
        self.parallel = parallel
        self.precision = precision
        self.val_tokens = dataset.num_tokens("val")
        self.windows = TokenWindows.open(dataset, "val", config.seq_len)
        self._starts: tuple[int, np.ndarray] | None = None

    def starts(self, batches: int) -> np.ndarray:
        """The starts of the windows `batches` batches score: the same ones every time."""
        count = batches * self.config.batch_size
        if self._starts is None or self._starts[0] != count:
            self._starts = (count, fixed_windows(self.val_tokens, self.config.seq_len, count))
        return self._starts[1]

    @torch.no_grad()
    def loss(self, starts: np.ndarray) -> float:
        """Mean next-token loss over the windows at `starts`, over every process (over the targets
        scored, with a loss mask: the answers)."""
        c, parallel, device = self.config, self.parallel, self.precision.device
        batches = [starts[i : i + c.batch_size] for i in range(0, len(starts), c.batch_size)]
        total = torch.zeros(2, device=device, dtype=torch.float64)  # summed loss, tokens
        for batch in batches[parallel.rank :: parallel.world_size]:
            x, y = self.windows.batch(batch, device)
            with self.precision.autocast():
                total[0] += parallel.eval_loss(x, y)
            total[1] += scored_count(y)  # every target, or a loss mask's scored ones
        total = parallel.all_reduce_sum(total)
        return float(total[0] / total[1])

    @torch.no_grad()
    def sample(self, model: GPT2) -> str:
        """--sample-prompt continued by --sample-tokens tokens (seeded: the same text for the same weights)."""
        c, tok = self.config, self.tokenizer
        settings = GenerationConfig(max_new_tokens=c.sample_tokens, seed=c.seed)
        new = generate(model, tok.encode(c.sample_prompt), settings, tok.eos_id, autocast=self.precision.autocast())
        return c.sample_prompt + tok.decode(new[0]).rstrip("\ufffd")  # no cut-off character

    def close(self) -> None:
        self.windows.close()
