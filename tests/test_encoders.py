"""Encoder backends: token-budget batching, the sentence-transformers default, the
OpenAI-compatible HTTP client (against a local server speaking the protocol with the real
model), and vLLM's lazy import."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.encoders.batching import token_budget_batches
from server.encoders.openai_http import EmbeddingServerError, OpenAICompatibleEncoder

TITLES = [
    "Toy Story (1995). Genres: Animation, Children's, Comedy",
    "Heat (1995). Genres: Action, Crime, Thriller",
    "A",
    "Dr. Strangelove or: How I Learned to Stop Worrying and Love the Bomb (1963). "
    "Genres: Sci-Fi, War",
]


@given(st.lists(st.integers(1, 300), max_size=60), st.integers(1, 2000), st.integers(1, 40))
def test_budget_batches_cover_every_text_once_within_budget(lengths, budget, max_batch) -> None:
    batches = token_budget_batches(lengths, budget, max_batch)
    flat = np.concatenate(batches) if batches else np.empty(0, dtype=int)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    for batch in batches:
        padded = len(batch) * max(lengths[i] for i in batch)
        assert len(batch) <= max_batch
        assert padded <= budget or len(batch) == 1


def test_sentence_transformer_keeps_input_order_and_reports_progress(pooled_encoder) -> None:
    seen: list[int] = []
    vectors = pooled_encoder.encode(TITLES, progress=seen.append)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    assert sum(seen) == 4
    one_by_one = np.vstack([pooled_encoder.encode([title]) for title in TITLES])
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)
    assert pooled_encoder.encode([]).shape == (0, 384)


class EmbeddingHandler(BaseHTTPRequestHandler):
    """The OpenAI /v1/embeddings protocol, answered with the real model."""

    encoder = None
    token = "secret"
    fail_next: list[int] = []
    requests_seen: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path != "/v1/embeddings":
            return self._answer(404, {"error": "not found"})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests_seen.append(body)
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            return self._answer(401, {"error": "unauthorized"})
        if self.fail_next:
            return self._answer(self.fail_next.pop(0), {"error": "try later"})
        vectors = self.encoder.encode(body["input"])
        as_base64 = body.get("encoding_format") == "base64"
        data = [
            {"index": i, "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()
             if as_base64 else v.tolist()}
            for i, v in enumerate(vectors)
        ]
        self._answer(200, {"data": data[::-1], "model": body["model"]})  # any order is legal

    def _answer(self, status: int, payload: dict) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def embedding_server(pooled_encoder) -> Iterator[str]:
    EmbeddingHandler.encoder = pooled_encoder
    EmbeddingHandler.fail_next = []
    EmbeddingHandler.requests_seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), EmbeddingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_http_encoder_returns_the_servers_vectors_in_input_order(
    embedding_server: str, pooled_encoder
) -> None:
    client = OpenAICompatibleEncoder(embedding_server, "minilm", api_key="secret", max_batch=3)
    assert client.dim == 384 and client.name == "openai-compatible/minilm"
    vectors = client.encode(TITLES)
    np.testing.assert_allclose(vectors, pooled_encoder.encode(TITLES), atol=1e-5)
    assert all(r["encoding_format"] == "base64" for r in EmbeddingHandler.requests_seen)
    assert max(len(r["input"]) for r in EmbeddingHandler.requests_seen) <= 3


def test_http_encoder_retries_overloaded_answers(embedding_server: str) -> None:
    client = OpenAICompatibleEncoder(embedding_server, "minilm", api_key="secret", dim=384)
    EmbeddingHandler.fail_next = [503, 429]
    assert client.encode(TITLES[:2]).shape == (2, 384)


def test_http_encoder_reports_a_refusal_without_retrying(embedding_server: str) -> None:
    with pytest.raises(EmbeddingServerError, match="answered 401"):
        OpenAICompatibleEncoder(embedding_server, "minilm", api_key="wrong")
    assert len(EmbeddingHandler.requests_seen) == 1


def test_http_encoder_reports_an_unreachable_server() -> None:
    with pytest.raises(EmbeddingServerError, match="unreachable"):
        OpenAICompatibleEncoder("http://127.0.0.1:9", "minilm", retries=1)


def test_http_encoder_rejects_a_url_that_is_not_http() -> None:
    with pytest.raises(ValueError, match="http"):
        OpenAICompatibleEncoder("grpc://host:1", "minilm", dim=3)


def test_vllm_encoder_names_the_gpu_extra_when_vllm_is_missing() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        from server.encoders.vllm_encoder import VLLMEncoder

        with pytest.raises(ImportError, match=r"tfllmer-service\[gpu\]"):
            VLLMEncoder("some/model")
    else:
        pytest.skip("vLLM is installed here; the GPU check covers it")
