"""Prometheus metrics of the gateway (served on ``/metrics``). Labels never carry keys or audio."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.active_streams = Gauge("brogue_active_streams", "Live streams", ["tenant", "api"], registry=r)
        self.streams_total = Counter("brogue_streams_total", "Streams started", ["tenant", "api"], registry=r)
        self.errors = Counter("brogue_errors_total", "Errors sent to clients, by kind", ["kind", "api"], registry=r)
        self.first_partial = Histogram("brogue_time_to_first_partial_seconds",
                                       "From the stream's first audio to its first partial", registry=r,
                                       buckets=_LATENCY_BUCKETS)
        self.final_latency = Histogram("brogue_end_of_speech_to_final_seconds",
                                       "From receiving the audio that ends an utterance to sending its final",
                                       registry=r, buckets=_LATENCY_BUCKETS)
        self.chunk_latency = Histogram("brogue_chunk_latency_seconds", "Triton round trip of one chunk",
                                       registry=r, buckets=_LATENCY_BUCKETS)
        self.rtf = Histogram("brogue_real_time_factor", "Processing time over audio time, per stream", registry=r,
                             buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0))
        self.audio_seconds = Counter("brogue_audio_seconds_total", "Audio received", ["tenant"], registry=r)
        self.triton_ready = Gauge("brogue_triton_ready_instances", "Triton instances ready with the gateway's model",
                                  registry=r)
        self.triton_restarts = Counter("brogue_triton_restarts_total",
                                       "Restarts of the tritonserver that brogue serve supervises", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
