"""The encoder executor: one encode at a time, a bounded queue, encoder failures as
UNAVAILABLE with health, and no encoding for a call that died while it waited (pure logic,
with stand-in encoders)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from server.call_lifetime import CallEnded, CallLifetime, running
from server.errors import ResourceExhausted, Unavailable
from server.service.encoder_executor import EncoderExecutor


class GatedEncoder:
    """Encodes only once ``gate`` is set; records what it encoded and how many ran at once."""

    name, dim = "gated", 2

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.encoded: list[str] = []
        self.running = self.most_at_once = 0
        self._lock = threading.Lock()

    def encode(self, texts, progress=None) -> np.ndarray:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            self.gate.wait(10)
            for text in texts:
                self.encoded.append(text)
                if progress is not None:
                    progress(1)
            return np.zeros((len(texts), 2), np.float32)
        finally:
            with self._lock:
                self.running -= 1


class BrokenEncoder:
    name, dim = "broken", 2

    def __init__(self) -> None:
        self.fail = True

    def encode(self, texts, progress=None) -> np.ndarray:
        if self.fail:
            raise RuntimeError("CUDA error: device-side assert triggered")
        return np.zeros((len(texts), 2), np.float32)


def test_one_encode_runs_at_a_time_and_the_queue_beyond_its_limit_is_refused() -> None:
    encoder = GatedEncoder()
    executor = EncoderExecutor(encoder, queue_limit=3)
    waiting = [threading.Thread(target=executor.encode, args=([f"t{i}"],)) for i in range(3)]
    for thread in waiting:
        thread.start()
    time.sleep(0.2)
    with pytest.raises(ResourceExhausted):
        executor.encode(["one too many"])
    encoder.gate.set()
    for thread in waiting:
        thread.join(10)
    assert sorted(encoder.encoded) == ["t0", "t1", "t2"] and encoder.most_at_once == 1
    executor.encode(["fits again"])


def test_a_call_that_died_while_queued_is_not_encoded_and_one_that_dies_stops_early() -> None:
    encoder = GatedEncoder()
    executor = EncoderExecutor(encoder, queue_limit=4)
    first = threading.Thread(target=executor.encode, args=(["first"],))
    first.start()
    time.sleep(0.1)
    lifetime = CallLifetime(deadline=None)
    errors: list[BaseException] = []

    def queued() -> None:
        with running(lifetime):
            try:
                executor.encode(["a", "b", "c"])
            except CallEnded as error:
                errors.append(error)

    second = threading.Thread(target=queued)
    second.start()
    time.sleep(0.1)
    lifetime.end()  # the client cancelled while its encode waited
    encoder.gate.set()
    first.join(10)
    second.join(10)
    assert encoder.encoded == ["first"] and len(errors) == 1


def test_encoder_failures_are_unavailable_and_turn_health_off_until_it_works() -> None:
    encoder = BrokenEncoder()
    executor = EncoderExecutor(encoder, queue_limit=2)
    with pytest.raises(Unavailable) as raised:
        executor.encode(["x"])
    assert "RuntimeError" in raised.value.message
    assert "device-side" not in raised.value.message  # no backend internals to the caller
    assert not executor.healthy
    encoder.fail = False
    executor.encode(["x"])
    assert executor.healthy
