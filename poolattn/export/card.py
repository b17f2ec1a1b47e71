"""Model card (README.md) and mteb ModelMeta-compatible model_meta.json of an exported model."""
from __future__ import annotations

import datetime
import json
from pathlib import Path

from ..matryoshka import trained_widths


def _train_summary(folder: Path) -> dict | None:
    """train_summary.json of the run that produced `folder` (the final model sits in the run folder or below it)."""
    for candidate in (folder / "train_summary.json", folder.parent / "train_summary.json"):
        if candidate.exists():
            return json.loads(candidate.read_text())
    return None


def model_meta(model, name: str, backbone, dtype: str) -> dict:
    """Fields of mteb's ModelMeta (loader left out: the folder loads as a sentence-transformers model)."""
    cfg = model.config
    n_params = sum(p.numel() for p in backbone.parameters()) + sum(p.numel() for p in model.pooler.parameters())
    bytes_per = 2 if dtype in ("bfloat16", "float16") else 4
    return {
        "name": f"local/{name}", "revision": None,
        "release_date": datetime.date.today().isoformat(), "languages": None,
        "n_parameters": n_params, "memory_usage_mb": round(n_params * bytes_per / 2**20, 1),
        "max_tokens": cfg.max_length, "embed_dim": model.embedding_dim, "license": "not specified",
        "open_weights": True, "public_training_code": "https://github.com/poolattn/poolattn",
        "public_training_data": None, "framework": ["Sentence Transformers", "PyTorch", "safetensors"],
        "similarity_fn_name": "cosine", "use_instructions": True, "training_datasets": None,
        "adapted_from": cfg.backbone, "modalities": ["text"], "model_type": ["dense"],
    }


def model_card(model, folder: Path, fmt: str, meta: dict, merge_cos: float | None, eval_dir) -> str:
    cfg = model.config
    lines = [f"# {meta['name'].split('/', 1)[1]}", "",
             f"A text-embedding model made with poolattn from `{cfg.backbone}`: {cfg.pooling} pooling, "
             f"{cfg.attention} attention, {model.embedding_dim} dimensions, up to {cfg.max_length} tokens"
             f"{', L2-normalised' if cfg.normalize else ''}.", "", "## Design", "",
             f"- pooler: `{cfg.pooling}` {json.dumps(model.pooler.get_config())}",
             f"- attention: {cfg.attention}" + (" (`is_causal: false` in config.json)" if cfg.attention == "bidirectional" else ""),
             f"- instruction format: `{cfg.instruction_template!r}` (queries get it; documents none)"]
    if cfg.echo:
        lines.append("- echo embeddings (Springer et al. 2024): every text is written twice, the second copy pooled "
                     "(`poolattn_echo.py`); about twice the tokens per text")
    if cfg.lora is not None:
        lines.append(f"- LoRA r={cfg.lora.r}, alpha={cfg.lora.alpha}, merged into the weights"
                     + (f" (merged vs unmerged min cosine {merge_cos:.7f}, fp32)" if merge_cos is not None else ""))
    widths = trained_widths(cfg, model.embedding_dim)
    if widths:
        lines += ["", "## Dimensions", "",
                  f"Matryoshka-trained: the first {', '.join(map(str, widths[:-1]))} or all {widths[-1]} components "
                  "(renormalised) are trained widths; any other width is a plain truncation, untrained. "
                  "sentence-transformers: `SentenceTransformer(..., truncate_dim=" + str(widths[0]) + ")`; "
                  "`matryoshka_dimensions` in config.json lets vLLM serve these `dimensions`."]
    summary = _train_summary(folder)
    if summary:
        lines += ["", "## Training", "", "```json", json.dumps(summary, indent=2, default=str), "```"]
    if eval_dir and (Path(eval_dir) / "summary.md").exists():
        lines += ["", "## Evaluation", "", (Path(eval_dir) / "summary.md").read_text().strip()]
    if fmt == "sentence-transformers":
        lines += ["", "## Use", "", "```python", "from sentence_transformers import SentenceTransformer", "",
                  f"model = SentenceTransformer(\"{meta['name'].split('/', 1)[1]}\", trust_remote_code=True)",
                  "queries = model.encode([\"how do I reset my password?\"], prompt_name=\"STSBenchmark\")",
                  "documents = model.encode([\"Open settings, then security.\"])", "```", "",
                  "Prompts: one per MTEB task (`model.prompts`), the task's instruction in the format above."]
    else:
        lines += ["", "## Use", "", f"A plain transformers folder: serve it with {cfg.pooling == 'eos' and 'last-token' or 'mean'} "
                  "pooling (text-embeddings-inference `--pooling " + ("last-token" if cfg.pooling == "eos" else "mean")
                  + "`, vLLM); the tokenizer appends EOS."]
    return "\n".join(lines) + "\n"
