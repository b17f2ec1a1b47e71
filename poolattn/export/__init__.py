"""`poolattn export`: a saved model as a sentence-transformers folder or a merged transformers folder.

sentence-transformers: the backbone with the LoRA merged (checked against the unmerged model in fp32), `is_causal`
in its config for bidirectional designs, a tokenizer that appends EOS as poolattn does, ST's own Pooling for
eos/mean/weighted_mean designs and, for latent/multilayer ones, `poolattn_pooler.py` + a verbatim `pooling.py` (only
torch, safetensors and sentence-transformers imported: loads with trust_remote_code=True, without poolattn), the
task instructions as ST prompts, Normalize. An echo design also gets `poolattn_echo.py` + a verbatim `echo.py`, a
first module that writes each text twice as poolattn does (and the PoolattnPooler, which pools the second copy). hf: the merged backbone and tokenizer only, for servers with built-in
mean or last-token pooling (text-embeddings-inference, vLLM). Both carry a model card and an mteb ModelMeta-style
model_meta.json. Both tokenizers truncate at the model's max_length, as poolattn does. A Matryoshka-trained model's
widths go into config.json as `matryoshka_dimensions` (vLLM's key) and into the model card. The folder is written whole or
not at all. `is_own_export` tells poolattn's own sentence-transformers exports from foreign code.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..fileio import atomic_dir
from ..matryoshka import trained_widths
from .card import model_card, model_meta

log = logging.getLogger(__name__)
ST_POOLING = {"eos": "lasttoken", "mean": "mean", "weighted_mean": "weightedmean"}
PROBE = ["the cat sat on the mat", "how do I reset my password?", "Paris is the capital of France.",
         "A man is playing a guitar on the street while people walk by.", "x"]
MERGE_MIN_COS = 0.99999
POOLER_MODULE = "poolattn_pooler.PoolattnPooler"
ECHO_MODULE = "poolattn_echo.PoolattnEcho"


def _code_files(echo: bool = False) -> dict[str, Path]:
    """The code a sentence-transformers export of a trainable pooler (or of any echo design) carries, as this
    poolattn writes it."""
    from .. import echo as echo_module
    from .. import pooling

    here = Path(__file__)
    files = {"pooling.py": Path(pooling.__file__), "poolattn_pooler.py": here.with_name("poolattn_pooler.py")}
    if echo:
        files.update({"echo.py": Path(echo_module.__file__), "poolattn_echo.py": here.with_name("poolattn_echo.py")})
    return files


def is_own_export(folder: str | Path) -> bool:
    """Whether `folder` is a sentence-transformers export written by this poolattn, so loading it with
    trust_remote_code runs only poolattn's own code: its modules outside sentence-transformers are PoolattnPooler
    (and PoolattnEcho), its code files are byte-identical to this version's, and its config.json maps no code
    (auto_map)."""
    folder = Path(folder)
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        custom = {m["type"] for m in modules if not m["type"].startswith("sentence_transformers.")}
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if custom not in ({POOLER_MODULE}, {POOLER_MODULE, ECHO_MODULE}) or "auto_map" in config:
            return False
        files = _code_files(echo=ECHO_MODULE in custom)
        return all((folder / name).read_bytes() == ours.read_bytes() for name, ours in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _merged(model) -> tuple[torch.nn.Module, float | None]:
    """The backbone with its LoRA merged, and the min cosine of merged against unmerged vectors (fp32)."""
    if model.config.lora is None or model.config.full_finetune:
        return model.backbone, None
    before = model.encode(PROBE)
    model.backbone = model.backbone.merge_and_unload()
    after = model.encode(PROBE)
    cos = float(min(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in zip(before, after)))
    if cos < MERGE_MIN_COS:
        raise ValueError(f"merging the LoRA changed the vectors: min cosine {cos:.7f} < {MERGE_MIN_COS}")
    return model.backbone, cos


def _append_eos(folder: Path, tokenizer, max_length: int) -> None:
    """Make the saved tokenizer end every text with EOS (poolattn appends one; ST and servers only tokenize) and
    truncate at `max_length` tokens, EOS included, as poolattn does (its own limit is often 1e30: none)."""
    eos, eos_id = tokenizer.eos_token, tokenizer.eos_token_id
    path = folder / "tokenizer.json"
    if not path.exists():
        raise ValueError(f"{folder}: the tokenizer has no tokenizer.json (a fast tokenizer is needed to export)")
    spec = json.loads(path.read_text(encoding="utf-8"))
    token = {"SpecialToken": {"id": eos, "type_id": 0}}
    special = {eos: {"id": eos, "ids": [eos_id], "tokens": [eos]}}
    template = {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}}, token],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}, token],
                "special_tokens": special}

    def patch(proc):
        if proc is None:
            return template
        if proc.get("type") == "TemplateProcessing":
            if proc["single"][-1] != token:
                proc["single"].append(token)
                proc["pair"].append(token)
            proc["special_tokens"].update(special)
            return proc
        if proc.get("type") == "Sequence":
            inner = [p for p in proc["processors"] if p.get("type") == "TemplateProcessing"]
            if inner:
                patch(inner[0])
            else:
                proc["processors"].append(template)
            return proc
        return {"type": "Sequence", "processors": [proc, template]}

    spec["post_processor"] = patch(spec.get("post_processor"))
    path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
    config.update(add_eos_token=True, padding_side="right",  # Llama-style tokenizers rebuild their template
                  model_max_length=max_length)
    if config.get("tokenizer_class") == "TokenizersBackend":  # transformers 5's generic name; 4.x (and servers
        config["tokenizer_class"] = "PreTrainedTokenizerFast"  # pinned to it, e.g. infinity) know only this one
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(folder)("hello")["input_ids"]
    if ids[-1] != eos_id or ids.count(eos_id) != 1:
        raise ValueError(f"{folder}: could not make the tokenizer append EOS ({eos!r}); got {ids}")


def _prompts(model) -> dict[str, str]:
    from ..evaluation.instructions import INSTRUCTIONS

    template = model.config.instruction_template
    if not template.endswith("{text}"):
        log.warning("instruction_template does not end with {text}: no ST prompts exported")
        return {}
    prefix = template[: -len("{text}")]
    return {task: prefix.format(instruction=instr) for task, instr in sorted(INSTRUCTIONS.items())}


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _st_native(model) -> bool:
    """Whether sentence-transformers' own Pooling computes this design (last layer, no options, no echo: the
    pooled tokens of an echo design are its PoolattnEcho's to say)."""
    return model.config.pooling in ST_POOLING and not model.pooler.get_config() and not model.config.echo


def _sentence_transformers(model, out: Path) -> None:
    cfg, dim = model.config, model.embedding_dim
    mask_prompt = bool(getattr(cfg, "mask_instruction", False)) or cfg.echo
    # (path, type) in order; an echo design's first module writes every text twice (sentence-transformers
    # tokenizes through the first module), the Transformer then runs the backbone on it.
    modules = [("", "sentence_transformers.models.Transformer")]
    if cfg.echo:
        modules.insert(0, ("0_PoolattnEcho", ECHO_MODULE))
        _write_json(out / "0_PoolattnEcho" / "config.json",
                    {"max_length": cfg.max_length, "prompts": sorted(set(_prompts(model).values()))})
    n = len(modules)
    if _st_native(model):
        modules.append((f"{n}_Pooling", "sentence_transformers.models.Pooling"))
        # word_embedding_dimension: the key every sentence-transformers version reads (6.x renames it on load)
        _write_json(out / f"{n}_Pooling" / "config.json", {"word_embedding_dimension": dim, "pooling_mode": ST_POOLING[cfg.pooling],
                                                           "include_prompt": not mask_prompt})
    else:
        modules.append((f"{n}_PoolattnPooler", POOLER_MODULE))
        for name, source in _code_files(cfg.echo).items():
            shutil.copyfile(source, out / name)
        bc = model.backbone.config
        _write_json(out / f"{n}_PoolattnPooler" / "config.json",
                    {"pooling": cfg.pooling, "hidden_size": bc.hidden_size, "num_layers": bc.num_hidden_layers,
                     "options": model.pooler.get_config(), "mask_prompt": mask_prompt})
        from safetensors.torch import save_file

        save_file({f"pooler.{k}": v.detach().float().contiguous().cpu() for k, v in model.pooler.state_dict().items()},
                  str(out / f"{n}_PoolattnPooler" / "model.safetensors"), metadata={"format": "pt"})
    if cfg.normalize:
        modules.append((f"{n + 1}_Normalize", "sentence_transformers.models.Normalize"))
        (out / f"{n + 1}_Normalize").mkdir()
    _write_json(out / "modules.json", [{"idx": i, "name": str(i), "path": path, "type": kind}
                                       for i, (path, kind) in enumerate(modules)])
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": cfg.max_length, "do_lower_case": False})
    import sentence_transformers
    import transformers

    _write_json(out / "config_sentence_transformers.json", {
        "model_type": "SentenceTransformer", "prompts": _prompts(model), "default_prompt_name": None,
        "similarity_fn_name": "cosine",
        "__version__": {"sentence_transformers": sentence_transformers.__version__,
                        "transformers": transformers.__version__, "pytorch": torch.__version__}})


def export_model(folder: str | Path, out: str | Path, fmt: Literal["sentence-transformers", "hf"] = "sentence-transformers",
                 dtype: str = "float32", eval_dir: str | Path | None = None) -> dict:
    """Export the saved poolattn model `folder` to `out`; returns what was checked (merge cosine, files)."""
    from ..model import CONFIG_NAME, EmbeddingModel

    folder, out = Path(folder), Path(out)
    if not (folder / CONFIG_NAME).exists():
        raise ValueError(f"{folder} is not a poolattn model folder (no {CONFIG_NAME})")
    if fmt not in ("sentence-transformers", "hf"):
        raise ValueError(f"unknown export format {fmt!r}; valid: sentence-transformers, hf")
    model = EmbeddingModel.from_pretrained(folder, dtype="float32", device="cpu").eval()
    if fmt == "hf" and model.config.echo:
        raise ValueError("--format hf cannot echo: a server's own pooling reads the text once; an echo design "
                         "writes it twice before the backbone (use --format sentence-transformers)")
    if fmt == "hf" and not _st_native(model):
        raise ValueError(f"--format hf needs a design with built-in pooling (eos, mean of the last layer; "
                         f"weighted_mean: ST only), not {model.config.pooling!r} {model.pooler.get_config() or ''}: "
                         f"use --format sentence-transformers")
    backbone, cos = _merged(model)
    backbone.config.output_hidden_states = bool(model.pooler.needs_all_layers)
    widths = trained_widths(model.config, model.embedding_dim)
    if widths:  # vLLM's key (its `dimensions` then accepts exactly these); the model card names them too
        backbone.config.matryoshka_dimensions = widths
    backbone = backbone.to(getattr(torch, dtype))
    with atomic_dir(out) as tmp:
        backbone.save_pretrained(tmp)
        model.tokenizer.save_pretrained(tmp)
        _append_eos(tmp, model.tokenizer, model.config.max_length)
        if fmt == "sentence-transformers":
            _sentence_transformers(model, tmp)
        meta = model_meta(model, out.name, backbone, dtype)
        _write_json(tmp / "model_meta.json", meta)
        (tmp / "README.md").write_text(model_card(model, folder, fmt, meta, cos, eval_dir), encoding="utf-8")
    return {"format": fmt, "merge_min_cos": cos, "out": str(out)}
