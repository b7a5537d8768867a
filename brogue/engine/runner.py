"""The streaming engine: many streams, each with its own adapter slot, stepped in batches.

:class:`StreamingRunner` is Brogue's data path, on ONNX Runtime (CPU: numpy and ONNX Runtime only)
or on torch. The Triton model ``asr_streaming`` wraps it; benchmarks and ``brogue eval`` call it in
process. One :meth:`StreamingRunner.step` takes new audio for any set of streams and

1. turns it into log-mel frames per stream (:class:`~brogue.audio.mel.StreamingMel`);
2. cuts encoder chunks exactly as NeMo does (:class:`~brogue.engine.stream.StreamState`);
3. runs the encoder once per (latency, first/steady) group, for all streams with a ready chunk,
   each row reading its own bank slot through ``adapter_ids`` and its caches from its row of the
   state pool, on the engine's device (:class:`~brogue.engine.encoder.Encoder`);
4. decodes (greedy CTC, batched greedy RNNT, or CTC beam search with the model's character LM
   when ``model.json`` has one: :mod:`brogue.engine.beam`) and returns the new tokens per stream.

A stream that has several chunks ready (a large packet) takes one round per chunk; everything else
in a round is one batched run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brogue.audio.mel import StreamingMel, _Kernel

from .beam import BeamConfig, BeamState, CTCBeamSearch
from .context_graph import Booster
from .decoding import Decoded, RNNTGreedy, ctc_greedy, ctc_greedy_boosted
from .encoder import Encoder
from .lm import MixedLM, load_lm
from .metadata import ModelMeta
from .phrases import PhraseTokenizer
from .stream import StreamState
from .weights import SharedWeights
from .vocab import Detokenizer


@dataclass
class StepOutput:
    """What one stream produced in one :meth:`StreamingRunner.step` (times in seconds from its start)."""

    tokens: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    blank_probs: list[float] = field(default_factory=list)  # one per new encoder frame
    text: str = ""  # detokenized new tokens (pieces joined; leading word marks become spaces)
    finished: bool = False  # the stream's last chunk has been decoded
    outputs: list = field(default_factory=list)  # per chunk head outputs [T, *], if keep_outputs


# The most bytes "auto" spends on private weight copies (one per ONNX graph served) for MLAS's
# prepacked matrix products: the demo model (14 MB, 8 graphs) takes them; the 114 M model (456 MB)
# keeps one shared copy (docs/performance.md, "The serving hot path").
PRIVATE_WEIGHTS_BUDGET = 512 << 20


def weights_mode(weights_bytes: int, graphs: int, budget: int = PRIVATE_WEIGHTS_BUDGET) -> str:
    """"private" when ``graphs`` copies of ``weights_bytes`` fit ``budget``, else "shared"."""
    return "private" if weights_bytes * graphs <= budget else "shared"


@dataclass
class RunnerStats:
    """Counters of batched encoder runs (for checking that batches mix streams and adapters)."""

    runs: int = 0
    rows: int = 0
    max_rows: int = 0
    mixed_adapter_runs: int = 0
    max_adapters_in_run: int = 0

    def record(self, ids: np.ndarray) -> None:
        n, k = len(ids), len(set(ids.tolist()))
        self.runs += 1
        self.rows += n
        self.max_rows = max(self.max_rows, n)
        self.mixed_adapter_runs += k > 1
        self.max_adapters_in_run = max(self.max_adapters_in_run, k)


class StreamingRunner:
    """Streams over one exported model: ``open`` streams, ``step`` them, ``close`` them.

    ``slots``: bank depth (slot 0 is the base model); write adapters with ``bank.write``. A stream
    whose ``slot`` is negative (its adapter is still loading) buffers audio but runs no chunk.
    ``provider``: "cpu", "cuda" or "tensorrt" (ONNX Runtime's providers), or "torch-cuda" / "torch-cpu"
    (the TorchScript steps), on GPU ``device_id`` (:mod:`brogue.engine.encoder`). ``max_streams``: rows
    of the state pool, the streams open at once (one more is refused with
    :class:`~brogue.engine.state_pool.PoolFull`); ``max_batch``: rows per encoder run. ``memory``:
    where the pool, bank and staging live, when not the provider's own ("host", "torch-cpu", "torch-cuda").
    ``decoder``: "auto" (beam search with the model's LM when model.json has one, else greedy),
    "greedy", or "lm" (beam search; an error if the model has no LM). RNNT heads decode greedily.
    ``latencies``: the latency names served (a list or a comma-separated string; default: all the
    model has); only their graphs are loaded, and a stream asking for another one is refused.
    ``weights``: "shared" (one read-only mapping of ``weights.bin`` for every session, MLAS prepacking
    off), "private" (each session reads and prepacks its own copy: faster matrix products on CPU,
    one more copy of the weights per graph), or "auto" (private while one copy per graph served
    stays within :data:`PRIVATE_WEIGHTS_BUDGET`, else shared). ``verify_weights``: check the SHA-256 of the shared
    weights file at load (its size always is).
    """

    DECODERS = ("auto", "greedy", "lm")
    WEIGHTS = ("auto", "shared", "private")

    def __init__(self, model_dir: str | Path, *, slots: int = 1, provider: str = "cpu", threads: int = 0,
                 device_id: int = 0, keep_outputs: bool = False, decoder: str = "auto", latencies=None,
                 weights: str = "auto", verify_weights: bool = True, max_streams: int = 256,
                 max_batch: int = 64, memory: str | None = None):
        self.keep_outputs = keep_outputs
        self.meta = ModelMeta.load(model_dir)
        self.latencies = self.meta.served_latencies(latencies)
        if weights not in self.WEIGHTS:
            raise ValueError(f"weights must be one of {self.WEIGHTS}, not {weights!r}")
        if weights == "auto":
            weights = weights_mode(self.meta.weights_bytes, 2 * len(self.latencies))
        self.weights_mode = weights
        # Opening checks the file (size, SHA-256) in either mode; "private" then lets each ORT session
        # read its own copy. The torch backend always reads the shared file.
        shared = SharedWeights.open(self.meta.root, verify=verify_weights)
        self.weights = shared if weights == "shared" else None
        self.encoder = Encoder(self.meta, provider=provider, threads=threads, device_id=device_id,
                               latencies=list(self.latencies),
                               weights=shared if provider.startswith("torch") else self.weights,
                               slots=slots, max_streams=max_streams, max_batch=max_batch, memory=memory)
        self.bank = self.encoder.bank
        self.pool = self.encoder.pool
        self.detok = Detokenizer(self.meta.tokens, self.meta.vocab_kind)
        self._phrases = None  # a PhraseTokenizer, made when a stream first boosts a phrase
        self._frame_seconds = self.meta.frame_seconds  # per emitted token: not rebuilt from model.json
        self._lm_surfaces = self.detok.lm_surfaces()  # each token's text as an LM scores it
        # The characters this model can write: every LM it decodes with counts them as seen.
        self.lm_alphabet = "".join(sorted(set("".join(self._lm_surfaces))))
        self.blank = self.meta.blank_id
        self._mel_kernel = _Kernel(self.meta.mel)
        self.rnnt = None
        if self.meta.head == "rnnt":  # decoder and joint on the encoder's backend
            loader = getattr(self.encoder.backend, "loader", None)
            self.rnnt = RNNTGreedy(self.meta.root, self.meta.rnnt, self.blank, provider, threads, device_id,
                                   weights=self.weights, loader=loader)
            self._rnnt_start = self.rnnt.initial_state(1)
        self.stats = RunnerStats()
        self.lm = None
        self.beam_config: BeamConfig | None = None
        self._slot_lms: dict[int, tuple] = {}  # slot -> (domain LM, weight)
        self._searchers: dict[int, CTCBeamSearch] = {}
        self._setup_decoder(decoder)
        self._no_frames = np.zeros((0, len(self.meta.tokens) + 1), dtype=np.float32)  # a beam's flush

    def _setup_decoder(self, decoder: str) -> None:
        if decoder not in self.DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; use one of {self.DECODERS}")
        spec = self.meta.ctc_lm
        if decoder == "greedy" or (decoder == "auto" and (spec is None or self.rnnt is not None)):
            return
        if self.rnnt is not None:
            raise ValueError("LM beam search is for CTC heads; this model decodes with RNNT")
        if spec is None:
            raise ValueError(f"{self.meta.root}: model.json has no language model (decoding.ctc_lm); "
                             "add one with `brogue lm`")
        self.lm = load_lm(self.meta.root / spec["file"], int(spec["order"]), alphabet=self.lm_alphabet)
        self.beam_config = BeamConfig.from_dict(spec)

    @property
    def decoder(self) -> str:
        return "greedy" if self.beam_config is None else "lm"

    def set_slot_lm(self, slot: int, lm=None, weight: float = 0.5) -> None:
        """Streams in bank ``slot`` decode with ``lm`` mixed into the model's LM at ``weight`` (an
        adapter's domain LM), or with the model's LM alone when ``lm`` is None. Takes effect for
        the next chunk; no-op under greedy decoding."""
        if lm is None:
            self._slot_lms.pop(slot, None)
        elif not 0 < weight < 1:
            raise ValueError(f"domain LM weight must be in (0, 1), not {weight}")
        else:
            self._slot_lms[slot] = (lm, weight)
        self._searchers.pop(slot, None)

    def slot_lm_setter(self, weights):
        """For an adapter about to enter a slot: a function ``f(slot)`` that gives the slot the
        adapter's domain LM (built now, from ``weights.lm_path``), or the model's LM alone when the
        adapter has none. Fits :class:`~brogue.server.adapters.AdapterBank`'s ``on_load``."""
        lm = weight = None
        if self.beam_config is not None and getattr(weights, "lm_path", None) is not None:
            spec = weights.manifest.lm
            lm, weight = load_lm(weights.lm_path, int(spec["order"]), alphabet=self.lm_alphabet), float(spec["weight"])
        return lambda slot: self.set_slot_lm(slot, lm, weight or 0.5)

    def _searcher(self, slot: int) -> CTCBeamSearch:
        s = self._searchers.get(slot)
        if s is None:
            lm = self.lm
            domain = self._slot_lms.get(slot)  # one read: the bank's loader thread may change it
            if domain is not None:
                dom, w = domain
                cfg = self.beam_config
                lm = MixedLM([(self.lm, 1 - w), (dom, w)], cfg.domain_window, cfg.domain_temperature)
            s = self._searchers[slot] = CTCBeamSearch(self._lm_surfaces, self.blank, lm, self.beam_config)
        return s

    @property
    def phrases(self) -> PhraseTokenizer:
        """Boost phrases to token ids and context graphs (cached per phrase set)."""
        if self._phrases is None:
            self._phrases = PhraseTokenizer.for_model(self.meta, self.meta.root)
        return self._phrases

    # -- streams ---------------------------------------------------------------------------------

    def open(self, stream_id, *, slot: int = 0, latency: str | None = None, boost=()) -> StreamState:
        """A new stream reading bank ``slot``, at ``latency`` (a name from model.json, or the default),
        with a row of the state pool (:class:`~brogue.engine.state_pool.PoolFull` when none is free).
        The row returns to the pool when the stream's last chunk is decoded, or on :meth:`close`.
        ``boost``: phrases (:class:`brogue.boosting.BoostPhrase`) this stream's decoding favours;
        a :class:`~brogue.engine.phrases.PhraseError` if the vocabulary cannot write one."""
        if not 0 <= slot < self.bank.slots:
            raise ValueError(f"slot {slot} out of range 0..{self.bank.slots - 1}")
        lat = self.latency(latency)
        graph = self.phrases.graph(boost) if boost else None
        st = StreamState(
            stream_id=stream_id,
            latency=lat,
            mel=StreamingMel(self.meta.mel, self._mel_kernel),
            slot=slot,
            row=self.pool.allocate(),
        )
        if self.rnnt is not None:
            g, h, c = self._rnnt_start
            st.dec_out, st.h, st.c = g[0].copy(), h[:, 0].copy(), c[:, 0].copy()
            st.last_token = self.blank
        if self.beam_config is not None:
            st.beam = BeamState(context=graph)
        elif graph is not None:
            st.booster = Booster(graph)
        return st

    def close(self, st: StreamState) -> None:
        """Give the stream's pool row back (a no-op once given back)."""
        if st.row >= 0:
            self.pool.release(st.row)
            st.row = -1

    def latency(self, name: str | None):
        """The served latency ``name`` (None or "": the default); a ValueError that names the served
        ones for a latency this runner does not serve."""
        return self.meta.served_latency(name, self.latencies)

    # -- stepping --------------------------------------------------------------------------------

    def step(self, work) -> dict:
        """Feed ``work``, an iterable of ``(state, float32 samples, end_of_stream)``, and run every
        chunk that becomes ready. Returns ``{stream_id: StepOutput}`` for the streams in ``work``."""
        outputs = {}
        states = []
        for st, samples, end in work:
            st.add_audio(np.asarray(samples, dtype=np.float32), end=end)
            outputs[st.stream_id] = StepOutput()
            states.append(st)
        while True:
            groups: dict[tuple[str, bool], list] = {}
            for st in states:
                if st.slot < 0:  # adapter still loading: audio is buffered, chunks wait
                    continue
                chunk = st.next_chunk()
                if chunk is not None:
                    groups.setdefault((st.latency.name, chunk.first), []).append((st, chunk))
            if not groups:
                break
            for (_, first), rows in groups.items():
                self._run_group(first, rows, outputs)
        for st in states:
            if st.finished and st.beam is not None:  # a tail too short for a final chunk: flush
                self._emit(st, self._searcher(st.slot).step(st.beam, self._no_frames, final=True),
                           outputs[st.stream_id])
                st.beam = None
            if st.finished:
                self.close(st)
            outputs[st.stream_id].finished = st.finished
        return outputs

    def _run_group(self, first: bool, rows, outputs) -> None:
        lat = rows[0][0].latency
        rows.sort(key=lambda r: r[0].row)  # ascending pool rows: often a slice of the pool, no gather
        step = self.encoder.max_batch
        for start in range(0, len(rows), step):
            self._run_batch(lat, first, rows[start:start + step], outputs)

    def _run_batch(self, lat, first: bool, rows, outputs) -> None:
        n = len(rows)
        feats, lengths, ids, pool_rows = self.encoder.staging(lat, first, n)
        for i, (st, ch) in enumerate(rows):
            w = ch.pad + ch.features.shape[1]
            feats[i, :, : ch.pad] = 0.0
            feats[i, :, ch.pad:w] = ch.features
            feats[i, :, w:] = 0.0  # a short final chunk: zero frames past its length
            lengths[i] = w
            ids[i] = st.slot
            pool_rows[i] = st.row
        self.stats.record(ids)
        out, out_len = self.encoder.run(lat, first, n)
        # NeMo keeps at most valid_out_len frames per chunk, except for the last chunk.
        n_out = np.array([int(out_len[i]) if ch.final else min(int(out_len[i]), lat.valid_out_len)
                          for i, (_, ch) in enumerate(rows)], dtype=np.int64)
        decoded = self._decode(out, n_out, rows)
        for i, (st, ch) in enumerate(rows):
            o = outputs[st.stream_id]
            self._emit(st, decoded[i], o)
            o.blank_probs += decoded[i].blank_probs.tolist()
            if self.keep_outputs:
                o.outputs.append(out[i, : n_out[i]].copy())
            st.frames_out += int(n_out[i])
            st.advance(ch)
            if ch.final:
                self.close(st)
                if st.beam is not None:
                    st.beam = None  # the final chunk committed everything

    def _emit(self, st: StreamState, d: Decoded, o: StepOutput) -> None:
        """Append decoded tokens (frames relative to the stream's current chunk) to its output."""
        fs = self._frame_seconds
        o.tokens += d.tokens
        o.times += [round((st.frames_out + f) * fs, 4) for f in d.frames]
        o.confidences += d.confidences
        o.text += self.detok.delta(d.tokens)
        st.tokens += d.tokens

    def _decode(self, out: np.ndarray, n_out: np.ndarray, rows) -> list[Decoded]:
        states = [st for st, _ in rows]
        if self.beam_config is not None:
            return [self._searcher(st.slot).step(st.beam, out[i, : n_out[i]], final=ch.final)
                    for i, (st, ch) in enumerate(rows)]
        if self.rnnt is None:
            last = np.array([st.last_token for st in states], dtype=np.int64)
            res = ctc_greedy(out, n_out, last, self.blank)
            for i, (st, tok) in enumerate(zip(states, last)):
                if st.booster is not None:  # redone for this row alone, with its phrases
                    res[i], tok = ctc_greedy_boosted(out[i], int(n_out[i]), st.last_token, self.blank, st.booster)
                st.last_token = int(tok)
            return res
        g = np.stack([st.dec_out for st in states])
        h = np.stack([st.h for st in states], axis=1)
        c = np.stack([st.c for st in states], axis=1)
        last = np.array([st.last_token for st in states], dtype=np.int64)
        boosters = [st.booster for st in states]
        res = self.rnnt(out, n_out, (g, h, c, last), boosters if any(boosters) else None)
        for i, st in enumerate(states):
            st.dec_out, st.h, st.c, st.last_token = g[i], h[:, i], c[:, i], int(last[i])
        return res

    # -- convenience -----------------------------------------------------------------------------

    def transcribe(self, audios, slots=None, *, packet: int | None = None, latency: str | None = None,
                   on_step=None, boosts=None):
        """Stream whole utterances (float32, model rate) in lock-step packets; return their final
        states (``.tokens``). ``on_step`` receives each step's outputs.

        ``packet``: samples per step (default: one steady chunk of audio). Used by tests and eval.
        ``boosts``: per utterance, its boost phrases (see :meth:`open`).
        """
        slots = slots or [0] * len(audios)
        boosts = boosts or [()] * len(audios)
        lat = self.latency(latency)
        packet = packet or lat.shift_size[1] * self.meta.mel.hop_length
        states = [self.open(i, slot=s, latency=latency, boost=b) for i, (s, b) in enumerate(zip(slots, boosts))]
        for pos in range(0, max(len(a) for a in audios) + 1, packet):
            res = self.step([(st, a[pos : pos + packet], pos + packet >= len(a))
                             for st, a in zip(states, audios) if not st.ended])
            if on_step is not None:
                on_step(res)
        return states
