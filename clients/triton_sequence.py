"""A blocking client for one ``asr_streaming`` sequence, over Triton's gRPC stream API.

One :class:`TritonSequence` is one Triton sequence (correlation id) on its own gRPC stream: a
tritonclient stream reports errors without saying which request failed, so sequences don't share
one. :meth:`TritonSequence.send` sends a chunk and waits for its response. Used by the tests and
benchmarks; the gateway talks to Triton with the asyncio client instead.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


@dataclass
class ChunkReply:
    tokens: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    blank_probs: list[float] = field(default_factory=list)
    text: str = ""
    frames_done: int = 0
    final: bool = False
    adapter_ready: bool = True


def _input(name: str, value: np.ndarray, dtype: str) -> grpcclient.InferInput:
    t = grpcclient.InferInput(name, list(value.shape), dtype)
    t.set_data_from_numpy(value)
    return t


class TritonSequence:
    """One sequence of ``model`` on the Triton server at ``url`` (``host:port``)."""

    def __init__(self, url: str, corrid: int, *, model: str = "asr_streaming", adapter: str = "",
                 latency: str = "", timeout: float = 60.0):
        self.url, self.corrid, self.model = url, corrid, model
        self.adapter, self.latency, self.timeout = adapter, latency, timeout
        self.client = grpcclient.InferenceServerClient(url)
        self._replies: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self._replies.put((result, error)))
        self.started = False

    def send(self, audio: np.ndarray, *, end: bool = False, start: bool | None = None,
             input_name: str | None = None) -> ChunkReply:
        """Send one chunk (float32 or int16 samples at 16 kHz) and return its reply.

        The first chunk carries START, the adapter and the latency. Raises
        ``InferenceServerException`` with the server's message when the request fails.
        """
        start = (not self.started) if start is None else start
        audio = np.asarray(audio)
        if input_name is None:
            input_name = "AUDIO_PCM16" if audio.dtype == np.int16 else "AUDIO"
        dtype = {np.dtype(np.float32): "FP32", np.dtype(np.int16): "INT16", np.dtype(np.int32): "INT32",
                 np.dtype(np.float64): "FP64"}[audio.dtype]
        inputs = [_input(input_name, audio.reshape(1, -1), dtype)]
        if start and self.adapter:
            inputs.append(_input("ADAPTER", np.array([[self.adapter.encode()]], dtype=np.object_), "BYTES"))
        if start and self.latency:
            inputs.append(_input("LATENCY", np.array([[self.latency.encode()]], dtype=np.object_), "BYTES"))
        self.client.async_stream_infer(self.model, inputs, sequence_id=self.corrid, sequence_start=start,
                                       sequence_end=end)
        self.started = True
        try:
            result, error = self._replies.get(timeout=self.timeout)
        except queue.Empty:
            raise TimeoutError(f"sequence {self.corrid}: no reply within {self.timeout} s") from None
        if error is not None:
            raise error if isinstance(error, InferenceServerException) else InferenceServerException(str(error))
        return ChunkReply(
            tokens=result.as_numpy("TOKENS").reshape(-1).tolist(),
            times=result.as_numpy("TOKEN_TIMES").reshape(-1).tolist(),
            confidences=result.as_numpy("CONFIDENCES").reshape(-1).tolist(),
            blank_probs=result.as_numpy("BLANK_PROBS").reshape(-1).tolist(),
            text=result.as_numpy("TEXT").reshape(-1)[0].decode(),
            frames_done=int(result.as_numpy("FRAMES_DONE").reshape(-1)[0]),
            final=bool(result.as_numpy("FINAL").reshape(-1)[0]),
            adapter_ready=bool(result.as_numpy("ADAPTER_READY").reshape(-1)[0]),
        )

    def close(self) -> None:
        try:
            self.client.stop_stream()
        finally:
            self.client.close()

    def __enter__(self) -> "TritonSequence":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
