"""Shared fixtures: a tiny tokenizer trained on sentences written here, tiny checkpoints.

No test may reach the network: the Hugging Face libraries are forced offline before import.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
import torch

from gpt2es_cli.checkpoint import save_model
from gpt2es_cli.config import ModelConfig
from gpt2es_cli.data.dataset import DatasetWriter
from gpt2es_cli.model import GPT2
from gpt2es_cli.tokenizer import Tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

SPANISH_SENTENCES = [
    "Había una vez un niño que vivía en un pueblo pequeño junto al río.",
    "¿Dónde está la señora Muñoz? ¡Está en el jardín con su perro!",
    "La niña leyó el libro de cuentos y sonrió cuando llegó al final.",
    "El pájaro cantó una canción alegre sobre el árbol más alto del bosque.",
    "Mañana iremos a la montaña si el tiempo lo permite, dijo el abuelo.",
    "Cuando llegó el invierno, la familia encendió la chimenea y contó historias.",
    "El pequeño ratón buscó queso en la cocina, pero el gato lo vigilaba.",
    "¡Qué día tan bonito! exclamó Lucía mientras caminaba por la playa.",
    "Había una vez una princesa que prefería los libros a las fiestas del castillo.",
    "El campesino sembró trigo en primavera y cosechó en otoño con sus hijos.",
]


def make_dataset(path, tokenizer, texts, repeats=40, val_repeats=2):
    """A prepared dataset of `texts` repeated (a few thousand tokens)."""
    with DatasetWriter(path, tokenizer) as writer:
        for split, n in (("train", repeats), ("val", val_repeats)):
            for _ in range(n):
                for text in texts:
                    writer.write(split, [*tokenizer.encode(text), tokenizer.eos_id], 1, len(text.encode()))
        writer.finish({"source": "test"})
    return path


def tiny_run(dataset, out, **kw):
    """The settings of a tiny training run on `dataset` into `out` (a few seconds); `kw` overrides."""
    from gpt2es_cli.config import TrainConfig

    settings = dict(
        data=str(dataset), out=str(out), preset="tiny", batch_size=4, max_steps=8, log_interval=1,
        eval_interval=4, eval_batches=2, sample_tokens=4, save_interval=4, device="cpu", lr=3e-3,
    )
    return TrainConfig(**{**settings, **kw})


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and the shared 2-core machine stays usable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def train_dataset(tmp_path, tiny_tokenizer, spanish_texts):
    """A prepared dataset of the Spanish test sentences, for training runs."""
    return make_dataset(tmp_path / "data", tiny_tokenizer, spanish_texts)


@pytest.fixture(scope="session")
def spanish_texts() -> list[str]:
    return list(SPANISH_SENTENCES)


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Tokenizer:
    """A byte-level BPE trained on the sentences above (a few hundred ids)."""
    return Tokenizer.train(SPANISH_SENTENCES * 4, vocab_size=400, min_frequency=1)


@pytest.fixture(scope="session")
def tiny_config(tiny_tokenizer) -> ModelConfig:
    return ModelConfig.from_preset("tiny", vocab_size=tiny_tokenizer.vocab_size)


@pytest.fixture(scope="session")
def tiny_model(tiny_config) -> GPT2:
    torch.manual_seed(0)
    return GPT2(tiny_config).eval()


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_model, tiny_config, tiny_tokenizer) -> Path:
    """A gpt2es checkpoint file of the tiny preset with the tiny tokenizer."""
    path = tmp_path / "tiny.pth"
    save_model(path, tiny_model, tiny_config, tiny_tokenizer)
    return path


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir() -> Path:
    """The original GPT-2 vocab.json + merges.txt from ../shared (skips when absent)."""
    path = SHARED / "gpt2-tokenizer"
    if not (path / "vocab.json").is_file():
        pytest.skip("../shared/gpt2-tokenizer is not available")
    return path


@pytest.fixture(scope="session")
def shared_corpus() -> Path:
    """The Spanish corpus in ../shared (skips when absent)."""
    path = SHARED / "corpus" / "es"
    if not path.is_dir():
        pytest.skip("../shared/corpus/es is not available")
    return path


@pytest.fixture
def nan_at(monkeypatch):
    """Make the training loss NaN on some calls of compute_loss (1-based): `install(bad)` with a
    collection of call numbers or a predicate on them."""
    from gpt2es_cli.training import loop as loop_module

    def install(bad_calls):
        is_bad = bad_calls if callable(bad_calls) else bad_calls.__contains__
        real = loop_module.compute_loss
        calls = {"n": 0}

        def patched(model, x, y):
            calls["n"] += 1
            loss = real(model, x, y)
            return loss * float("nan") if is_bad(calls["n"]) else loss

        monkeypatch.setattr(loop_module, "compute_loss", patched)

    return install
