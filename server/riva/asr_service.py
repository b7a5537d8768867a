"""The Riva-compatible gRPC front end: ``nvidia.riva.asr.RivaSpeechRecognition``, the WebSocket's twin.

Wire format: the compiled protos of ``nvidia-riva-client`` (``riva.client.proto``), so unmodified Riva
clients work. Every recognition call needs an API key in its metadata (``x-api-key``, ``api-key`` or
``authorization: Bearer KEY``), checked before any audio is read, as is the tenant's stream limit.
Everything stream-related is :meth:`Gateway.run_stream`; this module maps Riva's config onto
:class:`SessionConfig` and results onto Riva's messages (docs/riva.md, "Riva compatibility"):

- ``StreamingRecognize``: the first request carries ``streaming_config``, the others ``audio_content``.
  Partials (``interim_results``) have ``stability`` 0.1, or 0.9 once the endpointer hints at the end
  of the utterance; finals end with a space, as Riva's do, so clients may concatenate them.
- ``Recognize``: the whole audio goes through the same stream loop in 100 ms pieces; every final is
  one result.
- ``GetRivaSpeechRecognitionConfig``: one model; its latencies are parameters. It needs no key (it
  tells only the model's name and latencies, and riva's ``--list-models`` sends none); a wrong key is
  still refused.

Config: ``encoding`` LINEAR_PCM, MULAW or ALAW (UNSPECIFIED means LINEAR_PCM; FLAC and OGGOPUS are
INVALID_ARGUMENT); ``sample_rate_hertz`` 8000/16000/22050/44100/48000. Audio that starts with a WAV
header (what Riva's file clients send) is read with :mod:`wave`: its rate and 16-bit PCM win over the
config, and only its ``data`` chunk is audio. Multi-channel audio (WAV or ``audio_channel_count`` > 1)
is refused, not downmixed: a call recording keeps one speaker per channel, and a mix would merge two
speakers into one transcript; send each channel as its own stream. ``max_alternatives`` > 1 is
clamped to 1 (the proto's "at most"). ``model``: empty, the model's name (the default latency), or a
latency name of model.json; anything else is INVALID_ARGUMENT. ``language_code``: empty or English;
others are INVALID_ARGUMENT. ``enable_word_time_offsets``, ``endpointing_config`` and
``interim_results`` apply, and so do ``speech_contexts``: each phrase is boosted by its context's
``boost`` (:mod:`brogue.boosting`; a context without a boost gets the default), merged with the
tenant's phrases. Refused: speaker diarization. Ignored: punctuation, profanity filter, custom
configuration, verbatim_transcripts (transcripts are always verbatim), ``runtime_config``, request
ids.

Errors are gRPC status codes with the gateway's message (see ``STATUS``), counted in
``brogue_errors_total{api="riva"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import wave

import grpc
import riva.client.proto.riva_asr_pb2 as rasr
import riva.client.proto.riva_asr_pb2_grpc as rasr_grpc
import riva.client.proto.riva_audio_pb2 as raudio

from brogue.audio.codecs import SAMPLE_RATES
from brogue.boosting import DEFAULT_BOOST, validate
from brogue.errors import WIRE, ErrorCode

from ..endpointing import EndpointingConfig
from ..gateway import STOPPED, Gateway, StreamError
from ..session import SessionConfig

log = logging.getLogger(__name__)

ENCODINGS = {raudio.ENCODING_UNSPECIFIED: "pcm16", raudio.LINEAR_PCM: "pcm16", raudio.MULAW: "mulaw",
             raudio.ALAW: "alaw"}
WIDTH = {"pcm16": 2, "mulaw": 1, "alaw": 1}
IDLE_SECONDS = 30.0  # a stream that sends nothing for this long is ended
MAX_WAV_HEADER = 64 << 10


def api_key_of(metadata) -> str | None:
    for key, value in metadata or ():
        if isinstance(value, bytes):
            continue
        key = key.lower()
        if key in ("x-api-key", "api-key"):
            return value.strip()
        if key == "authorization" and value.lower().startswith("bearer "):
            return value[7:].strip()
    return None


def parse_wav(data: bytes, final: bool):
    """``(rate, data offset, data bytes or None)`` of a WAV header at the start of ``data``; None if
    more bytes are needed; StreamError if it is not a WAV Brogue can read."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
            fp = w.getfp()
            offset, size = fp.offset + fp.size_read, w.getnframes() * width * channels
    except (EOFError, wave.Error) as e:
        incomplete = isinstance(e, EOFError) or "missing" in str(e) or len(data) < 12
        if incomplete and not final and len(data) < MAX_WAV_HEADER:
            return None
        raise StreamError(ErrorCode.BAD_AUDIO, f"unreadable WAV header ({e}); send 16-bit PCM WAV or raw audio") from None
    if channels != 1:
        raise StreamError(ErrorCode.BAD_AUDIO, f"WAV has {channels} channels; send mono (one stream per channel)")
    if width != 2:
        raise StreamError(ErrorCode.BAD_AUDIO, f"WAV samples are {8 * width}-bit; send 16-bit PCM")
    return rate, offset, size if 0 < size < 0xFFFF0000 else None


class RivaSpeechRecognitionServicer(rasr_grpc.RivaSpeechRecognitionServicer):
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    # -- calls -----------------------------------------------------------------------------------

    async def StreamingRecognize(self, request_iterator, context):
        lease = None
        try:
            tenant = self._authenticate(context)
            requests = request_iterator.__aiter__()
            first = await self._next(requests)
            if first is None or not first.HasField("streaming_config"):
                raise StreamError(ErrorCode.BAD_REQUEST, "the first request must carry streaming_config")
            cfg = first.streaming_config
            check_config(self.gateway, cfg.config)
            # No Triton ready: UNAVAILABLE before any audio is taken. (Aborting before the first request
            # is read made grpc-core fail some of these calls as INTERNAL on the client, under load.)
            self.gateway.require_ready()
            lease = self.gateway.open_lease(tenant)  # over the limit: refused before any audio is read
            head, final = b"", False  # peek at the first audio for a WAV header
            while not final and (not head or head.startswith(b"RIFF"[:len(head)])):
                req = await self._next(requests)
                if req is not None and req.HasField("streaming_config"):
                    raise StreamError(ErrorCode.BAD_REQUEST, "streaming_config is allowed in the first request only")
                final = req is None
                head += b"" if final else req.audio_content
                if head.startswith(b"RIFF") and parse_wav(head, final) is not None:
                    break
            config, head, size = session_config(self.gateway, cfg.config, head, final, cfg.interim_results)

            async def audio():
                nonlocal head
                sent = 0
                while head or not final:
                    if size is not None:
                        head = head[:max(0, size - sent)]
                    if head:
                        sent += len(head)
                        counter.bytes += len(head)
                        yield head
                    req = None if final else await self._next(requests)
                    if req is None:
                        return
                    if req.HasField("streaming_config"):
                        raise StreamError(ErrorCode.BAD_REQUEST, "streaming_config is allowed in the first request only")
                    head = req.audio_content

            counter = _Processed(config)
            words = cfg.config.enable_word_time_offsets
            # aclosing: a cancelled call ends the stream (END to Triton, lease) at once, not at GC
            async with contextlib.aclosing(self.gateway.run_stream(tenant, config, audio(), api="riva",
                                                                   lease=lease)) as results:
                async for ev in results:
                    yield rasr.StreamingRecognizeResponse(results=[rasr.StreamingRecognitionResult(
                        alternatives=[alternative(ev, words)], is_final=ev.kind == "final",
                        stability=0.0 if ev.kind == "final" else 0.9 if ev.stable else 0.1,
                        audio_processed=counter.seconds, channel_tag=0)])
        except StreamError as e:
            await self._abort(context, e)
        except Exception:  # a bug fails this stream only, as INTERNAL
            log.exception("riva StreamingRecognize failed")
            await self._abort(context, StreamError(ErrorCode.INTERNAL, "internal error"))
        finally:
            if lease is not None:  # run_stream releases it too; this covers failures before it ran
                lease.release()

    async def Recognize(self, request, context):
        lease = None
        try:
            tenant = self._authenticate(context)
            self.gateway.require_ready()  # no Triton ready: UNAVAILABLE before any audio is taken
            check_config(self.gateway, request.config)
            lease = self.gateway.open_lease(tenant)
            config, audio, size = session_config(self.gateway, request.config, request.audio, True, False)
            audio = audio[:size] if size is not None else audio
            counter = _Processed(config)
            step = max(1, config.sample_rate // 10) * WIDTH[config.encoding]

            async def pieces():
                for i in range(0, len(audio), step):
                    counter.bytes += len(audio[i:i + step])
                    yield audio[i:i + step]

            results = []
            async with contextlib.aclosing(self.gateway.run_stream(tenant, config, pieces(), api="riva",
                                                                   lease=lease)) as events:
                async for ev in events:
                    if ev.kind == "final":
                        results.append(rasr.SpeechRecognitionResult(
                            alternatives=[alternative(ev, request.config.enable_word_time_offsets)],
                            channel_tag=0, audio_processed=counter.seconds))
            return rasr.RecognizeResponse(results=results)
        except StreamError as e:
            await self._abort(context, e)
        except Exception:
            log.exception("riva Recognize failed")
            await self._abort(context, StreamError(ErrorCode.INTERNAL, "internal error"))
        finally:
            if lease is not None:
                lease.release()

    async def GetRivaSpeechRecognitionConfig(self, request, context):
        try:  # no key needed (riva's `--list-models` sends none), but a wrong one is refused
            if api_key_of(context.invocation_metadata()) is not None:
                self._authenticate(context)
        except StreamError as e:
            await self._abort(context, e)
        meta = self.gateway.meta
        name = meta.raw.get("name") or "brogue"
        lats = meta.latencies
        if request.model_name and request.model_name not in (name, *lats):
            return rasr.RivaSpeechRecognitionConfigResponse()
        params = {"type": "online", "streaming": "true", "offline": "true", "language_code": "en-US",
                  "sample_rate": str(meta.sample_rate), "sample_rates": ",".join(map(str, SAMPLE_RATES)),
                  "encodings": "LINEAR_PCM,MULAW,ALAW", "latencies": ",".join(lats),
                  "default_latency": meta.default_latency, "head": meta.head}
        params.update({f"latency.{n}.chunk_ms": str(lat.chunk_ms) for n, lat in lats.items()})
        return rasr.RivaSpeechRecognitionConfigResponse(
            model_config=[rasr.RivaSpeechRecognitionConfigResponse.Config(model_name=name, parameters=params)])

    # -- helpers ---------------------------------------------------------------------------------

    def _authenticate(self, context):
        return self.gateway.authenticate(api_key_of(context.invocation_metadata()))

    async def _next(self, requests):
        """The next request; None at the end of the client's requests, or once the gateway is
        shutting down (the stream then ends as if the audio had: finals for everything received)."""
        try:
            req = await self.gateway.next_input(requests.__anext__, IDLE_SECONDS)
        except StopAsyncIteration:
            return None
        except asyncio.TimeoutError:
            raise StreamError(ErrorCode.IDLE, f"no request for {IDLE_SECONDS:g} s") from None
        return None if req is STOPPED else req

    async def _abort(self, context, e: StreamError):
        log.info("riva stream error (%s): %s", e.code, e)
        self.gateway.metrics.errors.labels(e.code, "riva").inc()
        await context.abort(getattr(grpc.StatusCode, WIRE[e.code].grpc_status), str(e))


class _Processed:
    """Seconds of client audio handed to the stream loop so far (``audio_processed``)."""

    def __init__(self, config: SessionConfig):
        self.bytes, self.rate = 0, config.sample_rate * WIDTH[config.encoding]

    @property
    def seconds(self) -> float:
        return self.bytes / self.rate


def check_config(gateway: Gateway, rc) -> None:
    """Refuse what does not apply, before any audio (module docstring)."""
    if rc.encoding not in ENCODINGS:
        # an open enum: a client may send a value this proto version has no name for
        name = raudio.AudioEncoding.Name(rc.encoding) if rc.encoding in raudio.AudioEncoding.values() else rc.encoding
        raise StreamError(ErrorCode.BAD_REQUEST, f"encoding {name} is not supported; use LINEAR_PCM, MULAW or ALAW")
    if rc.audio_channel_count > 1:
        raise StreamError(ErrorCode.BAD_REQUEST, f"audio_channel_count {rc.audio_channel_count}: only mono is supported "
                                         "(send one stream per channel)")
    if rc.diarization_config.enable_speaker_diarization:
        raise StreamError(ErrorCode.BAD_REQUEST, "speaker diarization is not supported")
    if rc.language_code and not rc.language_code.lower().startswith("en"):
        raise StreamError(ErrorCode.BAD_REQUEST, f"language_code {rc.language_code!r}: this model is en-US")
    latency(gateway, rc.model)


def latency(gateway: Gateway, model: str) -> str | None:
    if model in ("", gateway.meta.raw.get("name")):
        return None
    if model not in gateway.meta.latencies:
        raise StreamError(ErrorCode.BAD_REQUEST, f"unknown model {model!r}; use one of "
                                         f"{', '.join(sorted(gateway.meta.latencies))} (latencies) or leave it empty")
    return model


def session_config(gateway: Gateway, rc, audio: bytes, final: bool, interim: bool):
    """``(SessionConfig, audio without any WAV header, data bytes or None)``."""
    encoding, rate, size = ENCODINGS[rc.encoding], rc.sample_rate_hertz, None
    if audio.startswith(b"RIFF"):
        rate, offset, size = parse_wav(audio, final)
        encoding, audio = "pcm16", audio[offset:]
    if not rate:
        raise StreamError(ErrorCode.BAD_REQUEST, "sample_rate_hertz is required for raw audio (no WAV header)")
    if rate not in SAMPLE_RATES:
        raise StreamError(ErrorCode.BAD_REQUEST, f"sample_rate_hertz {rate} is not supported; use one of "
                                         f"{', '.join(map(str, SAMPLE_RATES))}")
    try:
        ep = EndpointingConfig.from_riva(rc.endpointing_config)
        boost = validate((p, c.boost if c.boost else DEFAULT_BOOST) for c in rc.speech_contexts for p in c.phrases)
    except ValueError as e:  # BoostError too
        raise StreamError(ErrorCode.BAD_REQUEST, str(e)) from None
    return SessionConfig(rate, encoding, interim, ep, latency(gateway, rc.model), boost), audio, size


def alternative(ev, with_words: bool) -> rasr.SpeechRecognitionAlternative:
    alt = rasr.SpeechRecognitionAlternative(transcript=ev.transcript + (" " if ev.kind == "final" else ""),
                                            confidence=ev.confidence)
    if with_words:
        alt.words.extend(rasr.WordInfo(word=w.word, start_time=round(w.start * 1000), end_time=round(w.end * 1000),
                                       confidence=w.confidence) for w in ev.words)
    return alt


def add_riva_asr(gateway: Gateway, server: grpc.aio.Server) -> RivaSpeechRecognitionServicer:
    servicer = RivaSpeechRecognitionServicer(gateway)
    rasr_grpc.add_RivaSpeechRecognitionServicer_to_server(servicer, server)
    return servicer
