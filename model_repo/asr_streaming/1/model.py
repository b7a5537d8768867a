"""Triton python-backend model ``asr_streaming``: a thin shell over brogue.server.streaming_model.

It reads its settings from the ``parameters`` of config.pbtxt, turns each request into a
``ChunkRequest`` (sequence controls, audio, adapter reference, latency), and each ``ChunkResult``
into a response, or a per-request error. State, batching, adapters and decoding live in
:class:`brogue.server.streaming_model.StreamingModel`.
"""

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from brogue.server.streaming_model import ChunkRequest, StreamingModel


def _scalar(request, name):
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy().reshape(-1)[0]


def _text(request, name):
    v = _scalar(request, name)
    return "" if v is None else (v.decode() if isinstance(v, bytes) else str(v))


class TritonPythonModel:
    def initialize(self, args):
        logging.basicConfig(level=logging.INFO)
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        repo = Path(args["model_repository"]).parent
        pin = tuple(p.strip() for p in params.get("PIN_ADAPTERS", "").split(",") if p.strip())
        self.model = StreamingModel(
            repo / params.get("MODEL_DIR", "exported/demo"),
            repo / params.get("ADAPTER_STORE", "adapters"),
            slots=int(params.get("BANK_SLOTS", "8")),
            provider=params.get("EXECUTION_PROVIDER", "cpu"),
            threads=int(params.get("INTRA_OP_THREADS", "0")),
            device_id=int(args.get("model_instance_device_id", "0") or 0),
            idle_timeout=float(params.get("IDLE_TIMEOUT_S", "60")),
            max_chunk_samples=int(params.get("MAX_CHUNK_SAMPLES", "160000")),
            pin=pin,
            decoder=params.get("DECODER", "auto"),
            latencies=params.get("LATENCIES", ""),
            weights=params.get("WEIGHTS", "auto"),
            max_streams=int(params.get("MAX_STREAMS", "256")),
            max_batch=int(params.get("MAX_BATCH", "64")),
        )
        self._metrics = self._make_metrics()
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, name="sequence-sweeper", daemon=True)
        self._sweeper.start()

    def _make_metrics(self):
        """Gauges on Triton's metrics port (python backend custom metrics): live sequences, swept
        sequences and model errors, so a soak can see state that leaks. None on servers without them."""
        if not hasattr(pb_utils, "MetricFamily"):
            return None
        gauge = pb_utils.MetricFamily.GAUGE
        fams = {
            "live": ("brogue_asr_live_sequences", "Sequences holding state in asr_streaming"),
            "swept": ("brogue_asr_swept_sequences", "Sequences freed by the idle sweep, since start"),
            "errors": ("brogue_asr_request_errors", "Requests answered with an error, since start"),
        }
        # The families must outlive their metrics: keep both.
        self._metric_families = {k: pb_utils.MetricFamily(name=n, description=d, kind=gauge) for k, (n, d) in fams.items()}
        return {k: f.Metric(labels={}) for k, f in self._metric_families.items()}

    def _publish_metrics(self):
        if self._metrics is None:
            return
        m, st = self._metrics, self.model.stats
        try:
            m["live"].set(len(self.model.streams))
            m["swept"].set(st.swept)
            m["errors"].set(st.errors)
        except Exception:  # noqa: BLE001 - metrics must never fail a request
            logging.getLogger(__name__).exception("asr_streaming: metrics update failed")
            self._metrics = None

    def _sweep(self):
        """Sweep idle sequences every min(5 s, IDLE_TIMEOUT_S / 4), and publish the gauges every
        second: off the request path (each metric update is a round trip to the Triton process)."""
        period = max(1.0, min(5.0, self.model.idle_timeout / 4))
        last_sweep = time.monotonic()
        while not self._stop.wait(1.0):
            if time.monotonic() - last_sweep >= period:
                self.model.sweep_locked()
                last_sweep = time.monotonic()
            self._publish_metrics()

    def execute(self, requests):
        chunks = []
        for r in requests:
            audio = pb_utils.get_input_tensor_by_name(r, "AUDIO")
            if audio is None:
                audio = pb_utils.get_input_tensor_by_name(r, "AUDIO_PCM16")
            chunks.append(ChunkRequest(
                corrid=int(_scalar(r, "CORRID")),
                start=bool(_scalar(r, "START")),
                end=bool(_scalar(r, "END")),
                audio=None if audio is None else audio.as_numpy(),
                adapter=_text(r, "ADAPTER"),
                latency=_text(r, "LATENCY"),
                boost=_text(r, "BOOST"),
            ))
        responses = []
        for res in self.model.execute(chunks):
            if res.error is not None:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(res.error)))
                continue
            extra = [pb_utils.Tensor("MODEL_FINGERPRINT", np.asarray([[res.model_fingerprint.encode()]], dtype=np.object_)),
                     pb_utils.Tensor("LIVE_SEQUENCES", np.asarray([[res.live_sequences]], dtype=np.int32)),
                     ] if res.model_fingerprint else []
            responses.append(pb_utils.InferenceResponse(output_tensors=extra + [
                pb_utils.Tensor("TOKENS", np.asarray([res.tokens], dtype=np.int32)),
                pb_utils.Tensor("TOKEN_TIMES", np.asarray([res.times], dtype=np.float32)),
                pb_utils.Tensor("CONFIDENCES", np.asarray([res.confidences], dtype=np.float32)),
                pb_utils.Tensor("BLANK_PROBS", np.asarray([res.blank_probs], dtype=np.float32)),
                pb_utils.Tensor("TEXT", np.asarray([[res.text.encode()]], dtype=np.object_)),
                pb_utils.Tensor("FRAMES_DONE", np.asarray([[res.frames_done]], dtype=np.int32)),
                pb_utils.Tensor("FINAL", np.asarray([[res.final]], dtype=np.bool_)),
                pb_utils.Tensor("ADAPTER_READY", np.asarray([[res.adapter_ready]], dtype=np.bool_)),
            ]))
        return responses

    def finalize(self):
        self._stop.set()
        self.model.close()
