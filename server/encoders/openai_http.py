"""Client for an OpenAI-compatible ``/v1/embeddings`` server (vLLM, TEI, Infinity, …).

The base URL follows the OpenAI SDK convention and includes the version prefix, e.g.
``http://vllm:8000/v1``; requests go to ``<base URL>/embeddings``.

Lets the service use an embedding server that is already running instead of loading a
model itself. Vectors are requested as base64 (``encoding_format="base64"``: packed
little-endian float32, far cheaper to decode than JSON numbers); a server that ignores the
option and answers with JSON lists is handled too. Connections are kept alive; 429 and 5xx
answers and dropped connections are retried with exponential backoff.
"""

from __future__ import annotations

import base64
import http.client
import json
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from server.encoders.base import ProgressCallback
from server.encoders.batching import estimate_tokens, token_budget_batches

RETRIABLE_STATUS = frozenset({429, 500, 502, 503, 504})


class EmbeddingServerError(RuntimeError):
    """The embedding server refused a request or answered something unusable."""


class OpenAICompatibleEncoder:
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        dim: int | None = None,
        token_budget: int = 8192,
        max_batch: int = 256,
        timeout_seconds: float = 60.0,
        retries: int = 4,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"embedding server URL must be http(s)://host[:port], got {base_url!r}"
            )
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port
        self._path = parts.path.rstrip("/") + "/embeddings"  # base URL ends in /v1
        self._model = model
        self._api_key = api_key
        self._timeout = timeout_seconds
        self._retries = retries
        self._connection: http.client.HTTPConnection | None = None
        self.token_budget = token_budget
        self.max_batch = max_batch
        self._dim = dim if dim is not None else self._request(["dimension probe"]).shape[1]

    @property
    def name(self) -> str:
        return f"openai-compatible/{self._model}"

    @property
    def dim(self) -> int:
        return self._dim

    def encode(
        self, texts: Sequence[str], progress: ProgressCallback | None = None
    ) -> np.ndarray:
        texts = list(texts)
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        lengths = [estimate_tokens(text) for text in texts]
        for batch in token_budget_batches(lengths, self.token_budget, self.max_batch):
            vectors = self._request([texts[i] for i in batch])
            if vectors.shape != (len(batch), self._dim):
                raise EmbeddingServerError(
                    f"expected {len(batch)} vectors of dim {self._dim}, got {vectors.shape}"
                )
            out[batch] = vectors
            if progress is not None:
                progress(len(batch))
        return out

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _request(self, texts: list[str]) -> np.ndarray:
        body = json.dumps(
            {"model": self._model, "input": texts, "encoding_format": "base64"}
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        for attempt in range(self._retries + 1):
            try:
                status, payload = self._post(body, headers)
            except (OSError, http.client.HTTPException) as error:
                self.close()  # a dropped keep-alive connection: reconnect on retry
                if attempt == self._retries:
                    raise EmbeddingServerError(f"embedding server unreachable: {error}") from error
            else:
                if status == 200:
                    return _decode(payload)
                if status not in RETRIABLE_STATUS or attempt == self._retries:
                    raise EmbeddingServerError(
                        f"embedding server answered {status}: {payload[:300]!r}"
                    )
            time.sleep(min(0.25 * 2**attempt, 8.0))
        raise AssertionError("unreachable")

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self._connection is None:
            secure = self._scheme == "https"
            factory = http.client.HTTPSConnection if secure else http.client.HTTPConnection
            self._connection = factory(self._host, self._port, timeout=self._timeout)
        self._connection.request("POST", self._path, body=body, headers=headers)
        response = self._connection.getresponse()
        return response.status, response.read()


def _decode(payload: bytes) -> np.ndarray:
    try:
        items: list[dict[str, Any]] = sorted(json.loads(payload)["data"], key=lambda d: d["index"])
        rows = [
            np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
            if isinstance(item["embedding"], str)
            else np.asarray(item["embedding"], dtype=np.float32)
            for item in items
        ]
        return np.vstack(rows).astype(np.float32, copy=False) if rows else np.empty((0, 0))
    except (ValueError, KeyError, TypeError) as error:
        raise EmbeddingServerError(f"unreadable embedding response: {error}") from error
