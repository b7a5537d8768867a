"""A blocking client for one ``asr_streaming`` sequence, over Triton's gRPC stream API.

One :class:`TritonSequence` is one Triton sequence (correlation id) on its own gRPC stream: a
tritonclient stream reports errors without saying which request failed, so sequences don't share
one. :meth:`TritonSequence.send` sends a chunk and waits for its response. Used by the tests and
benchmarks; the gateway talks to Triton with the asyncio client instead.
"""

from __future__ import annotations

import queue

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from brogue.asr_io import ChunkReply, parse_reply, request_inputs

__all__ = ["ChunkReply", "TritonSequence"]


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
        inputs = request_inputs(audio, start=start, adapter=self.adapter, latency=self.latency,
                                input_name=input_name)
        self.client.async_stream_infer(self.model, inputs, sequence_id=self.corrid, sequence_start=start,
                                       sequence_end=end)
        self.started = True
        try:
            result, error = self._replies.get(timeout=self.timeout)
        except queue.Empty:
            raise TimeoutError(f"sequence {self.corrid}: no reply within {self.timeout} s") from None
        if error is not None:
            raise error if isinstance(error, InferenceServerException) else InferenceServerException(str(error))
        return parse_reply(result)

    def close(self) -> None:
        try:
            self.client.stop_stream()
        finally:
            self.client.close()

    def __enter__(self) -> "TritonSequence":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
