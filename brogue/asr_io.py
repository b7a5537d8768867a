"""The wire format of the Triton model ``asr_streaming`` in tritonclient terms, for the gateway and
the clients (the model itself uses :mod:`brogue.asr_reply` only).

:func:`request_inputs` builds the inputs of one chunk request (audio, and on START the adapter and
latency); :func:`parse_reply` reads a reply into a :class:`ChunkReply`. The tensors are documented
in docs/asr-streaming.md. Works with both ``tritonclient.grpc`` and ``tritonclient.grpc.aio``
(their ``InferInput`` and ``InferResult`` are the same classes).
"""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as grpcclient

from .asr_reply import MODEL, ChunkReply

__all__ = ["MODEL", "ChunkReply", "parse_reply", "request_inputs"]
_TYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int16): "INT16", np.dtype(np.int32): "INT32",
          np.dtype(np.float64): "FP64"}


def _input(name: str, value: np.ndarray, dtype: str) -> grpcclient.InferInput:
    t = grpcclient.InferInput(name, list(value.shape), dtype)
    t.set_data_from_numpy(value)
    return t


def request_inputs(audio: np.ndarray, *, start: bool, adapter: str = "", latency: str = "", boost: str = "",
                   input_name: str | None = None) -> list[grpcclient.InferInput]:
    """Inputs of one chunk: float32 goes to ``AUDIO``, int16 to ``AUDIO_PCM16`` (unless named);
    on START, the adapter, latency and ``boost`` (:func:`brogue.boosting.to_wire`) when given."""
    audio = np.asarray(audio)
    if input_name is None:
        input_name = "AUDIO_PCM16" if audio.dtype == np.int16 else "AUDIO"
    inputs = [_input(input_name, audio.reshape(1, -1), _TYPES[audio.dtype])]
    if start and adapter:
        inputs.append(_input("ADAPTER", np.array([[adapter.encode()]], dtype=np.object_), "BYTES"))
    if start and latency:
        inputs.append(_input("LATENCY", np.array([[latency.encode()]], dtype=np.object_), "BYTES"))
    if start and boost:
        inputs.append(_input("BOOST", np.array([[boost.encode()]], dtype=np.object_), "BYTES"))
    return inputs


def parse_reply(result) -> ChunkReply:
    fingerprint = result.as_numpy("MODEL_FINGERPRINT")
    live = result.as_numpy("LIVE_SEQUENCES")
    return ChunkReply(
        tokens=result.as_numpy("TOKENS").reshape(-1).tolist(),
        times=result.as_numpy("TOKEN_TIMES").reshape(-1).tolist(),
        confidences=result.as_numpy("CONFIDENCES").reshape(-1).tolist(),
        blank_probs=result.as_numpy("BLANK_PROBS").reshape(-1).tolist(),
        text=result.as_numpy("TEXT").reshape(-1)[0].decode(),
        frames_done=int(result.as_numpy("FRAMES_DONE").reshape(-1)[0]),
        final=bool(result.as_numpy("FINAL").reshape(-1)[0]),
        adapter_ready=bool(result.as_numpy("ADAPTER_READY").reshape(-1)[0]),
        model_fingerprint="" if fingerprint is None else fingerprint.reshape(-1)[0].decode(),
        live_sequences=-1 if live is None else int(live.reshape(-1)[0]),
    )
