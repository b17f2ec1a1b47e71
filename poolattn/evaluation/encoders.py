"""Models as mteb encoders: poolattn models through an adapter, sentence-transformers models as mteb wraps them,
both behind one embedding cache that also reports encoding progress."""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

from ..matryoshka import truncate_dims
from .instructions import instruction_for
from .loading import fingerprint
from .tasktypes import TASK_TYPES

# The embedding cache is saved (atomically) after a chunk once this many seconds passed since the last save, and at
# the end of every encode call: a kill loses at most this much encoding plus one chunk.
SAVE_EVERY_S = 10.0
class PoolattnEncoder(AbsEncoder):
    """mteb's encoder protocol over an EmbeddingModel: texts out of mteb's dataloader, the task's instruction in
    through `model.encode(..., instruction=...)`, documents without one."""

    def __init__(self, model: Any, overrides: Mapping[str, str | None] | None = None):
        self.model = model
        self.overrides = dict(overrides or {})
        self.aliases: dict[str, str] = {}  # mteb task name -> our name (e.g. SciFact -> SciFactNano) for overrides
        cfg = model.config
        self.mteb_model_meta = ModelMeta.create_empty(overwrites=dict(
            name=f"poolattn/{Path(cfg.backbone).name}-{cfg.pooling}-{cfg.attention}", revision=model.fingerprint(),
            embed_dim=model.embedding_dim, max_tokens=cfg.max_length, similarity_fn_name=ScoringFunction.COSINE,
            use_instructions=True, framework=["PyTorch"]))

    def instruction(self, task_metadata: Any, prompt_type: PromptType | None) -> str | None:
        if prompt_type == PromptType.document:
            return None
        names = [self.aliases[task_metadata.name]] if task_metadata.name in self.aliases else []
        return instruction_for(names + [task_metadata.name], task_metadata, self.overrides)

    def encode(self, inputs: Any, *, task_metadata: Any, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs: Any) -> np.ndarray:
        texts = [t for batch in inputs for t in batch["text"]]
        return self.model.encode(texts, instruction=self.instruction(task_metadata, prompt_type),
                                 batch_size=kwargs.get("batch_size", 32), show_progress_bar=False)


@functools.cache
def _numpy_cache_class() -> type:
    """mteb's NumpyCache made crash-safe: a kill at any instant leaves the previous store or the new one.

    mteb writes `dimension` at the first add and `index.json` in place at save, so a kill between the two (or during
    the index write) left a store that every later run refused ("Vectors file not initialized"). Here `dimension`
    and `index.json` are written at save only, each to a temporary file renamed over the old one, the index last
    (rows are flushed before it, and rows past the saved index are never read). A store found inconsistent when
    opened (left by older versions) is removed and rebuilt with a warning that names it.
    """
    from mteb.models.cache_wrappers.cache_backends.numpy_cache import NumpyCache

    from ..fileio import write_text

    class CrashSafeNumpyCache(NumpyCache):
        def _save_dimension(self) -> None:
            if getattr(self, "_saving", False):
                write_text(self.dimension_file, str(self.vector_dim))

        def save(self) -> None:
            if self.vectors is not None:
                self.vectors.flush()
            self._saving = True
            try:
                self._save_dimension()
            finally:
                self._saving = False
            write_text(self.index_file, json.dumps({str(h): int(i) for h, i in self.hash_to_index.items()}))

        def load(self) -> None:
            problem = self._problem()
            if problem:
                logging.getLogger(__name__).warning("embedding cache %s is incomplete (%s: a run was interrupted "
                                                    "while writing it); rebuilding it", self.directory, problem)
                for f in (self.index_file, self.dimension_file, self.vectors_file):
                    f.unlink(missing_ok=True)
                return
            if self.index_file.exists():
                super().load()

        def _problem(self) -> str | None:
            files = (self.index_file, self.dimension_file, self.vectors_file)
            missing = [f.name for f in files if not f.exists()]
            if len(missing) == 3:
                return None
            if missing == [self.index_file.name, self.dimension_file.name]:  # killed before its first save
                self.vectors_file.unlink()  # nothing was committed: start afresh, silently
                return None
            if missing:
                return f"{' and '.join(missing)} missing"
            try:
                dim = int(self.dimension_file.read_text().strip())
                index = json.loads(self.index_file.read_text())
            except (ValueError, OSError) as err:
                return f"index.json or dimension unreadable ({type(err).__name__})"
            rows = self.vectors_file.stat().st_size // (4 * dim) if dim > 0 else 0
            if dim <= 0 or any(not isinstance(i, int) or not 0 <= i < rows for i in index.values()):
                return f"index.json points past the {rows} rows of vectors.npy"
            return None

    return CrashSafeNumpyCache


# Task types whose evaluators encode overlapping texts in several calls (STS and pair sentences on both sides,
# classification's training set once per evaluated split; every type but the query ones): vectors are kept for the
# task's later calls. Retrieval corpora are encoded in chunks that may not fit in memory together, and rarely repeat
# a text across calls.
_MEMO_TYPES = tuple(t.name for t in TASK_TYPES.values() if not t.queries)


class EncodeRunner:
    """Wraps an mteb encoder: serves cached embeddings, encodes the rest in chunks and reports progress.

    Args:
        encoder: the mteb encoder (PoolattnEncoder, or mteb's wrapper of a SentenceTransformer).
        cache_dir: the model's embedding cache folder (None: no cache).
        key: (task metadata, prompt type) -> the store a vector belongs to: everything besides the text that
            changes it (the instruction, the side where the model encodes queries and documents differently).
        chunk_size: texts per call of the encoder (progress and cache saves happen between chunks).
        on_progress: (done, total) texts of the current encode call.
        dedup: encode each distinct (text, key) once per task: once per call, and for _MEMO_TYPES once across the
            task's calls; vectors are scattered back to every position. False: every text as mteb passes it.
        dimensions: cut every vector returned to its first `dimensions` components and renormalise (a Matryoshka
            width); the cache and the task memo hold the full vectors, so every width shares them. None: full width.

    Cache: mteb's NumpyCache backend, one store per (model fingerprint, key), keyed by the text's hash, so
    every task that embeds the same text with the same instruction shares it. mteb's CachedEmbeddingWrapper does not
    fit: it keys stores by task name (no sharing across tasks, and it cannot see our instruction overrides) and in
    mteb 2.26 it re-prepares already prepared corpus rows, which repeats each document's title.
    Not safe for two processes writing the same store at once. Crash-safe (see _numpy_cache_class) and saved every
    SAVE_EVERY_S seconds (at a chunk's end) and at the end of each call, so an interrupted run keeps what it encoded up
    to its last save for the next run; a cache folder that cannot be written (read-only, full) is dropped with a
    warning and evaluation goes on without it.
    """

    def __init__(self, encoder: Any, cache_dir: Path | None, key: Callable[[Any, PromptType | None], str],
                 chunk_size: int = 256, on_progress: Callable[[int, int], None] | None = None, dedup: bool = True,
                 dimensions: int | None = None):
        from ..distributed import world

        self.encoder = encoder
        # Under a process group every rank runs the same mteb calls and encodes its share of each call's texts
        # (rank, rank + size, ...); rank 0 alone reads and writes the cache and decides what is left to encode.
        self.rank, self.size = world()
        self.cache_dir = cache_dir if self.rank == 0 else None
        self.key = key
        self.chunk_size = chunk_size
        self.on_progress = on_progress  # (done, total) texts of the current encode call
        self.dedup = dedup
        self.dimensions = dimensions
        self._memo: dict[tuple[str, str], np.ndarray] = {}  # (key, text) -> vector, of the current task
        self._memo_task: str | None = None
        self._stores: dict[str, Any] = {}
        self.encoded = 0  # texts actually run through the model (not served from the cache)

    @property
    def mteb_model_meta(self) -> ModelMeta:
        meta = self.encoder.mteb_model_meta
        return meta if self.dimensions is None else meta.model_copy(update={"embed_dim": self.dimensions})

    def similarity(self, e1: Any, e2: Any) -> Any:
        return self.encoder.similarity(e1, e2)

    def similarity_pairwise(self, e1: Any, e2: Any) -> Any:
        return self.encoder.similarity_pairwise(e1, e2)

    def _store(self, key: str) -> Any:
        cache = _numpy_cache_class()
        if key not in self._stores:
            log = logging.getLogger(cache.__mro__[1].__module__)
            level = log.level
            log.setLevel(logging.CRITICAL)  # a new store says "no existing files" twice; our warning says more
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    store = cache(self.cache_dir / key, initial_vectors=4096)
                    store.load()
            except OSError as err:
                return self._drop_cache(err)
            finally:
                log.setLevel(level)
            self._stores[key] = store
        return self._stores[key]

    def _drop_cache(self, err: OSError) -> None:
        """Go on without the cache: it cannot be written (read-only folder, full disk, ...)."""
        logging.getLogger(__name__).warning("embedding cache %s cannot be used (%s); evaluating without it",
                                            err.filename or self.cache_dir, err.strerror or err)
        self.close()
        self.cache_dir = None

    def encode(self, inputs: Any, *, task_metadata: Any, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs: Any) -> np.ndarray:
        from torch.utils.data import DataLoader

        dataset = inputs.dataset
        texts = list(dataset["text"])
        out: list[Any] = [None] * len(texts)
        key = self.key(task_metadata, prompt_type)
        store = self._store(key) if self.cache_dir is not None else None
        memo = self._task_memo(task_metadata)
        first: dict[Any, int] = {}  # with dedup each distinct text is encoded once; without, every position
        for i, t in enumerate(texts):
            first.setdefault(t if self.dedup else i, i)
        todo = []
        for i in first.values():
            v = memo.get((key, texts[i])) if memo is not None else None
            if v is None and store is not None:
                v = store.get_vector({"text": texts[i]})
            if v is None:
                todo.append(i)
            else:
                out[i] = np.array(v)
        if self.size > 1:  # rank 0's cache decides; the others get its served vectors with the encoded ones
            from ..distributed import broadcast

            todo, served = broadcast((todo, {i: out[i] for i in first.values() if out[i] is not None}))
            for i, v in served.items():
                out[i] = v
        if self.dedup:  # with dedup, also longest first across the whole call, not only within each chunk (the
            # model sorts each chunk by tokens): chunks hold texts of similar length, batches carry little padding.
            # The same vectors up to rounding (batch composition), as with dedup itself.
            todo.sort(key=lambda i: -len(texts[i]))
        every, todo = todo, todo[self.rank::self.size]
        saved = time.monotonic()
        for start in range(0, len(todo), self.chunk_size):
            idx = todo[start:start + self.chunk_size]
            loader = DataLoader(dataset.select(idx), batch_size=inputs.batch_size, collate_fn=inputs.collate_fn)
            emb = np.asarray(self.encoder.encode(loader, task_metadata=task_metadata, hf_split=hf_split,
                                                 hf_subset=hf_subset, prompt_type=prompt_type, **kwargs),
                             dtype=np.float32)
            if store is not None:
                try:
                    store.add([{"text": texts[i]} for i in idx], emb)
                    if time.monotonic() - saved >= SAVE_EVERY_S:  # an interrupted encode keeps most of its work
                        store.save()
                        saved = time.monotonic()
                except OSError as err:
                    store = self._drop_cache(err)
            for i, v in zip(idx, emb):
                out[i] = v
            self.encoded += len(idx)
            if self.on_progress:
                self.on_progress(start + len(idx), len(todo))
        if self.size > 1:
            from ..distributed import gather_all

            for r, part in enumerate(gather_all({i: out[i] for i in todo})):
                for i, v in part.items():
                    out[i] = v
                if store is not None and r != self.rank and part:
                    try:
                        store.add([{"text": texts[i]} for i in part], np.stack(list(part.values())))
                    except OSError as err:
                        store = self._drop_cache(err)
            todo = every
        if store is not None and todo:
            try:
                store.save()
            except OSError as err:
                self._drop_cache(err)
        for i, t in enumerate(texts):
            if out[i] is None:
                out[i] = out[first[t]]
        if memo is not None:
            memo.update({(key, texts[i]): out[i] for i in first.values()})
        if not texts:
            return np.zeros((0, self.mteb_model_meta.embed_dim or 0), dtype=np.float32)
        return truncate_dims(np.stack(out), self.dimensions)

    def _task_memo(self, task_metadata: Any) -> dict[tuple[str, str], np.ndarray] | None:
        """The vectors kept for the rest of this task (None: not kept); emptied when another task begins."""
        if not self.dedup or task_metadata is None or task_metadata.type not in _MEMO_TYPES:
            return None
        if task_metadata.name != self._memo_task:
            self._memo, self._memo_task = {}, task_metadata.name
        return self._memo

    def close(self) -> None:
        self._memo.clear()
        for store in self._stores.values():
            store.close()
        self._stores.clear()


def mteb_encoder(model: Any, overrides: Mapping[str, str | None] | None = None) -> tuple[Any, Callable]:
    """(mteb encoder, cache-key function) for an EmbeddingModel or a SentenceTransformer."""
    from sentence_transformers import SentenceTransformer

    if isinstance(model, SentenceTransformer):
        from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper

        if overrides:
            warnings.warn("instructions are not applied to sentence-transformers models (evaluated as mteb does, "
                          "with the model's own prompts if it has any)", stacklevel=3)
        with warnings.catch_warnings():  # mteb reads the dimension by sentence-transformers 5's deprecated name
            warnings.filterwarnings("ignore", message=r"The `get_sentence_embedding_dimension` method has been renamed",
                                    category=FutureWarning)
            enc = SentenceTransformerEncoderWrapper(model)
        meta = enc.mteb_model_meta
        name = getattr(model, "poolattn_name", None) or meta.name
        name = "local/sentence-transformer" if not name or name.startswith("no_model_name") else name
        enc.mteb_model_meta = meta.model_copy(update={"name": name if "/" in name else f"local/{name}",
                                                      "revision": fingerprint(model)})

        def key(meta: Any, prompt_type: PromptType | None) -> str:
            # mteb picks a prompt of the model's own by task name and side, and encodes queries and documents
            # through encode_query / encode_document (which may route them through different modules, or add the
            # model's default prompts): the side is always part of the key (the bug of mteb issue #5383)
            side = prompt_type.value if prompt_type else "none"
            return f"{meta.name}-{side}" if enc.model_prompts else f"plain-{side}"
        return enc, key
    enc = PoolattnEncoder(model, overrides)

    def key(meta: Any, prompt_type: PromptType | None) -> str:
        # A poolattn model sees the side only through the instruction (documents get none): the instruction is the key
        instruction = enc.instruction(meta, prompt_type)
        return "plain" if not instruction else "i-" + hashlib.sha256(instruction.encode()).hexdigest()[:16]
    return enc, key
