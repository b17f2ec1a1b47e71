"""Layer analysis: how the embeddings of each hidden layer differ (the paper's Figure 1) and how each one scores
on tasks (its Figure 2). One backbone pass gives every layer's EOS and mean vectors; they are cached per text so
that scoring 30 layers costs one encode, not thirty.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .model import EmbeddingModel
from .pooling import last_token_index, masked_mean

LAYER_POOLINGS = ("eos", "mean")


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear centered kernel alignment (Kornblith et al. 2019). Written here because no maintained library we
    depend on ships it; it is the feature-space formula, O(n d^2), fine for a few thousand texts."""
    x = x - x.mean(0, keepdims=True)
    y = y - y.mean(0, keepdims=True)
    cross = np.linalg.norm(y.T @ x) ** 2
    return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def cka_matrix(layers: np.ndarray) -> np.ndarray:
    """[L, N, D] -> [L, L] linear CKA between every pair of layers."""
    L = layers.shape[0]
    gram = [None] * L
    x64 = [(a - a.mean(0, keepdims=True)).astype(np.float64) for a in layers]
    for i in range(L):
        gram[i] = np.linalg.norm(x64[i].T @ x64[i])
    out = np.eye(L)
    for i in range(L):
        for j in range(i + 1, L):
            out[i, j] = out[j, i] = np.linalg.norm(x64[j].T @ x64[i]) ** 2 / (gram[i] * gram[j])
    return out


class LayerCache:
    """Per-text EOS and mean vectors of every layer (1..L) of one model, filled lazily by batched passes."""

    def __init__(self, model: EmbeddingModel, batch_size: int = 32):
        self.model, self.batch_size = model, batch_size
        self.vectors: dict[tuple[str, str | None], np.ndarray] = {}  # (text, instruction) -> [2, L, D] float16

    @torch.inference_mode()
    def fill(self, texts: Sequence[str], instruction: str | None = None, show_progress_bar: bool = True):
        from tqdm.auto import tqdm

        todo = list(dict.fromkeys(t for t in texts if (t, instruction) not in self.vectors))
        if not todo:
            return
        m = self.model
        m.eval()
        # Every real token (the analysis pools layers itself), but under echo only the second copy's, as it pools.
        ids, skip = m._token_ids(todo, instruction)
        skip = skip if m.config.echo else None
        order = np.argsort([-len(x) for x in ids], kind="stable")
        for start in tqdm(range(0, len(order), self.batch_size), desc="layers", disable=not show_progress_bar,
                          unit="batch"):
            idx = order[start:start + self.batch_size]
            batch = m._pad([ids[i] for i in idx], [skip[i] for i in idx] if skip else None)
            batch = {k: v.to(m.device) for k, v in batch.items()}
            mask = batch.pop("pool_mask", batch["attention_mask"])
            position_ids = (batch["attention_mask"].cumsum(1) - 1).clamp(min=0)
            states = m.backbone(**batch, position_ids=position_ids, output_hidden_states=True,
                                use_cache=False).hidden_states[1:]
            last = last_token_index(mask)
            rows = torch.arange(mask.shape[0], device=mask.device)
            eos = torch.stack([h[rows, last].float() for h in states], 1)
            mean = torch.stack([masked_mean(h, mask) for h in states], 1)
            both = torch.stack([eos, mean], 1).cpu().numpy().astype(np.float16)  # [B, 2, L, D]
            for k, i in enumerate(idx):
                self.vectors[(todo[i], instruction)] = both[k]

    def get(self, texts: Sequence[str], layer: int, pooling: str, instruction: str | None = None,
            show_progress_bar: bool = False) -> np.ndarray:
        """[N, D] float32, L2-normalised, for layer 1..L."""
        self.fill(texts, instruction, show_progress_bar)
        p = LAYER_POOLINGS.index(pooling)
        out = np.stack([self.vectors[(t, instruction)][p, layer - 1] for t in texts]).astype(np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


class LayerEncoder:
    """Looks like an EmbeddingModel to the evaluation harness, but returns one layer's vectors."""

    def __init__(self, cache: LayerCache, layer: int, pooling: str):
        if pooling not in LAYER_POOLINGS:
            raise ValueError(f"unknown layer pooling {pooling!r}; valid: {', '.join(LAYER_POOLINGS)}")
        self.cache, self.layer, self.pooling = cache, layer, pooling
        self.config = cache.model.config.model_copy(update={"pooling": "eos" if pooling == "eos" else "mean"})

    def encode(self, texts, instruction: str | None = None, batch_size: int = 32, show_progress_bar=None):
        return self.cache.get(list(texts), self.layer, self.pooling, instruction, bool(show_progress_bar))

    @property
    def embedding_dim(self) -> int:
        return self.cache.model.backbone.config.hidden_size

    def fingerprint(self) -> str:
        return f"{self.cache.model.fingerprint()}-layer{self.layer}-{self.pooling}"


def plot_cka(matrices: dict[str, np.ndarray], path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(matrices), figsize=(5.2 * len(matrices), 4.4), squeeze=False)
    for ax, (name, mat) in zip(axes[0], matrices.items()):
        im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis", origin="lower",
                       extent=(0.5, mat.shape[0] + 0.5, 0.5, mat.shape[0] + 0.5))
        ax.set_title(f"{name} pooling: linear CKA between layers")
        ax.set_xlabel("layer")
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_layer_scores(scores: dict[str, dict[str, list[float]]], path: Path, title: str):
    """scores[task][pooling] = per-layer main score (0-1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for task, by_pool in scores.items():
        for pooling, values in by_pool.items():
            ax.plot(range(1, len(values) + 1), [100 * v for v in values], marker="o", ms=3,
                    ls="-" if pooling == "eos" else "--", label=f"{task} ({pooling})")
    ax.set_xlabel("layer")
    ax.set_ylabel("main score x 100")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sample_texts(data_dir: Path, n: int = 1000, task: str = "STSBenchmark") -> list[str]:
    """Distinct sentences of an STS task of the pack: the probe set for layer similarity."""
    path = Path(data_dir) / "mteb" / task / "test.jsonl"
    seen: dict[str, None] = {}
    with path.open() as f:
        for line in f:
            row = json.loads(line)
            for key in ("sentence1", "sentence2", "text"):
                if key in row:
                    seen.setdefault(row[key])
            if len(seen) >= n:
                break
    return list(seen)[:n]


def analyze_layers(model: EmbeddingModel, tasks: Sequence[str], output: str | Path, data_dir: str | Path | None = None,
                   n_texts: int = 1000, batch_size: int = 32, poolings: Sequence[str] = LAYER_POOLINGS) -> dict:
    """CKA between every pair of layers on `n_texts` probe sentences, and every layer's score on `tasks`.

    Writes layers.json, layer_similarity.png and layer_scores.png into `output`; returns the JSON as a dict.
    """
    from .datadir import default_data_dir
    from .evaluation import evaluate

    data_dir = Path(data_dir or default_data_dir())
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    cache = LayerCache(model, batch_size)
    L = model.backbone.config.num_hidden_layers
    # Probe sentences: the first chosen task with a test.jsonl of texts, else STSBenchmark.
    probe_task = next((t for t in tasks if (data_dir / "mteb" / t / "test.jsonl").exists()), "STSBenchmark")
    probe = sample_texts(data_dir, n_texts, probe_task)
    cache.fill(probe)
    cka = {p: cka_matrix(np.stack([cache.get(probe, layer, p) for layer in range(1, L + 1)])) for p in poolings}
    scores: dict[str, dict[str, list[float]]] = {t: {p: [] for p in poolings} for t in tasks}
    for p in poolings:
        for layer in range(1, L + 1):
            results = evaluate(LayerEncoder(cache, layer, p), list(tasks), data_dir=data_dir,
                               output_dir=out / "eval" / f"{p}-layer{layer:02d}", batch_size=batch_size,
                               cache=False, progress=False)
            for t in tasks:
                scores[t][p].append(float(results[t].main_score))
    name = model.config.backbone
    # A trained folder names its backbone too: say it is the LoRA-trained one, not the pre-trained model.
    label = name + (f", LoRA-trained {model.config.pooling} design" if model.config.lora else "")
    plot_cka(cka, out / "layer_similarity.png", f"{label} ({model.config.attention})")
    plot_layer_scores(scores, out / "layer_scores.png", f"{label} ({model.config.attention}): score of each layer")
    result = {"model": name, "lora_trained": model.config.lora is not None, "attention": model.config.attention,
              "num_layers": L, "n_texts": len(probe),
              "probe_task": probe_task,
              "cka": {p: m.round(4).tolist() for p, m in cka.items()}, "scores": scores,
              "best_layer": {t: {p: int(np.argmax(v)) + 1 for p, v in by.items()} for t, by in scores.items()},
              "files": [str(out / f) for f in ("layers.json", "layer_similarity.png", "layer_scores.png")]}
    (out / "layers.json").write_text(json.dumps(result, indent=1))
    return result
