"""What the Triton model ``asr_streaming`` answers per chunk, and the words it refuses a stream with
when it is full. Shared by the model (which must import nothing of tritonclient: NVIDIA's Triton
container does not ship it to the python backend) and the gateway; the wire encoding that needs
tritonclient is :mod:`brogue.asr_io`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MODEL = "asr_streaming"

CAPACITY_ERROR = "stream capacity reached"
"""How the message of the model's ``capacity`` error begins (:class:`brogue.errors.ErrorCode`) when
every stream slot of its state pool is taken: the words a client reads; the code is what routes it
(WebSocket 1013, gRPC RESOURCE_EXHAUSTED)."""


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
    model_fingerprint: str = ""  # on the reply to START: the served model's fingerprint (model.json)
    live_sequences: int = -1  # on the reply to START: sequences holding state after this request (-1: not sent)
