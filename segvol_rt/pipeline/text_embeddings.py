"""Text embeddings of a runtime (:class:`TextEmbeddings`): the artifacts' table
for known names (:func:`segvol_rt.io.vocabulary.normalize_name`), else a
bounded phrase cache, else the text encoder on the prompt template. Rows are
``(C,)`` float32 on the host (uploaded per decoder call)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from segvol_rt import validate as V
from segvol_rt.errors import SegVolError
from segvol_rt.io import spec as S
from segvol_rt.ops import arrays as A
from segvol_rt.pipeline.caches import ByteLRU

if TYPE_CHECKING:
    from segvol_rt.io.artifacts import Artifacts
    from segvol_rt.io.tokenizer import ClipTokenizer


class TextEmbeddings:
    """The text embeddings of ``artifacts``, encoded by the backend a call names
    (its text encoder and array module); encoded phrases kept up to
    ``cache_bytes`` (``cache``, least recently used out). Names of the
    artifacts' table are never cached."""

    def __init__(self, artifacts: Artifacts, cache_bytes: int):
        self.artifacts = artifacts
        self.config = artifacts.config
        self.cache: ByteLRU[str] = ByteLRU(cache_bytes)
        self._table: dict[str, np.ndarray] | None = None
        self._tokenizer: ClipTokenizer | None = None

    def known_names(self) -> dict[str, np.ndarray]:
        if self._table is None:
            from segvol_rt.io.vocabulary import normalize_name

            # artifacts without a table run every phrase through the text encoder;
            # a table that is listed but unreadable is an error, never a silent fallback
            if self.artifacts.has_text_table:
                names, table = self.artifacts.text_table()
            else:
                names, table = [], np.zeros((0, self.config.embed_dim), np.float32)
            self._table = {normalize_name(n): row for n, row in zip(names, table)}
        return self._table

    def embeddings(self, backend: Any, texts: Sequence[str]) -> list[np.ndarray]:
        """(C,) float32 per text (a list of non-empty strings): the table row of
        a known name, else the phrase cache, else the text encoder on the prompt
        template (one batched call for the new phrases, then cached)."""
        from segvol_rt.io.vocabulary import normalize_name

        texts = list(V.sequence(texts, "texts", "str"))
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise SegVolError(f"texts[{i}] must be a non-empty str, not {t!r:.60}")
        table = self.known_names()
        keys = [normalize_name(t) for t in texts]
        found: dict[str, np.ndarray] = {}  # this call's rows, whatever the cache evicts meanwhile
        for k in dict.fromkeys(keys):
            row = table[k] if k in table else self.cache.get(k)
            if row is not None:
                found[k] = row
        new = [k for k in dict.fromkeys(keys) if k not in found]
        if new:
            raw = {normalize_name(t): t.strip() for t in texts}
            found.update(self._encode_phrases(backend, new, [raw[k] for k in new]))
        return [found[k] for k in keys]

    def _encode_phrases(self, backend: Any, keys: Sequence[str], phrases: Sequence[str]) -> dict[str, np.ndarray]:
        """Text-encoder rows (C,) float32 of ``phrases``, cached under ``keys``."""
        if self._tokenizer is None:
            self._tokenizer = self.artifacts.tokenizer()
        ids = self._tokenizer.encode_names(list(phrases), self.artifacts.prompt_template)
        limit = backend.preferred_batch(S.TEXT_ENCODER)
        out: dict[str, np.ndarray] = {}
        for i in range(0, len(keys), limit):
            # (B, C) floats: downloaded once per phrase, uploaded per decoder call
            emb = A.to_host(backend.encode_text(backend.xp.asarray(ids[i : i + limit])))
            for k, e in zip(keys[i : i + limit], emb):
                out[k] = np.array(e, np.float32)  # a copy: not a view pinning the whole batch
                self.cache.put(k, out[k])
        return out
