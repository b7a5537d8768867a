"""StreamingModel (the logic of asr_streaming) in process: sequences, adapters, sweeping, errors."""

from __future__ import annotations

import time

import numpy as np
import pytest

from brogue.errors import ErrorCode, split_tag
from brogue.server.streaming_model import ChunkRequest, StreamingModel
from conftest import demo_speech, reference_run

pytestmark = pytest.mark.nemo


@pytest.fixture
def model(demo_repo):
    m = StreamingModel(demo_repo.model_dir, demo_repo.store_dir, slots=3, idle_timeout=30, decoder="greedy")
    yield m
    m.close()


def reference(demo_repo, audio, name=None):
    """Tokens of ``audio`` alone in process, with the adapter of test name ``name`` (or base)."""
    return reference_run(demo_repo, audio, demo_repo.arrays[name] if name else None)[1]


def play(model, streams, packet=5000):
    """Step several (corrid, audio, adapter) streams in lock-step batches; return tokens per corrid."""
    tokens = {c: [] for c, _, _ in streams}
    ready = {c: [] for c, _, _ in streams}
    for pos in range(0, max(len(a) for _, a, _ in streams), packet):
        reqs = [ChunkRequest(c, pos == 0, pos + packet >= len(a), a[pos:pos + packet], adapter=ref)
                for c, a, ref in streams if pos < len(a)]
        for req, res in zip(reqs, model.execute(reqs)):
            assert res.error is None, res.error
            tokens[req.corrid] += res.tokens
            ready[req.corrid].append(res.adapter_ready)
    return tokens, ready


def test_batched_sequences_with_adapters_equal_the_reference(model, demo_repo):
    rng = np.random.default_rng(0)
    streams = [(1, demo_speech(rng, 2.5), ""), (2, demo_speech(rng, 3.0), demo_repo.refs["scot"]),
               (3, demo_speech(rng, 1.7), demo_repo.refs["carib"])]
    tokens, ready = play(model, streams)
    short = {ref: name for name, ref in demo_repo.refs.items()}
    for c, a, ref in streams:
        assert tokens[c] == reference(demo_repo, a, short[ref] if ref else None) and tokens[c], c
    assert all(ready[c][-1] for c in ready)
    assert model.stats.mixed_sequence_executes > 0 and model.runner.stats.mixed_adapter_runs > 0
    assert not model.streams and all(info.refcount == 0 for info in model.bank.snapshot().values())


def test_a_stream_buffers_while_its_adapter_loads(model, demo_repo):
    """The first request starts the load and returns at once, with no tokens; the stream buffers its
    audio, and catches up once the adapter is in. The store's read is held until the first two
    requests are answered, so the buffering always happens."""
    import threading

    gate = threading.Event()
    read_entry = model.store._read_entry

    def held(entry, base):  # the store's one file-system read of an entry
        assert gate.wait(30), "the test never released the load"
        return read_entry(entry, base)

    model.store._read_entry = held
    audio = demo_speech(np.random.default_rng(1), 2.0)
    first = model.execute([ChunkRequest(7, True, False, audio[:16000], adapter=demo_repo.refs["med"])])[0]
    assert first.error is None and not first.adapter_ready and first.tokens == []
    second = model.execute([ChunkRequest(7, False, False, audio[16000:24000])])[0]
    assert second.error is None and not second.adapter_ready and second.tokens == []
    assert 7 in model.streams and model.streams[7].frames.shape[1] > 0  # the audio waits, as features
    gate.set()
    rest = model.execute([ChunkRequest(7, False, True, audio[24000:])])[0]  # END waits for the load
    assert rest.final and rest.adapter_ready
    assert rest.tokens == reference(demo_repo, audio, "med")


def test_sweep_frees_idle_sequences_and_their_bank_slots(model, demo_repo):
    audio = demo_speech(np.random.default_rng(2), 1.0)
    model.execute([ChunkRequest(9, True, False, audio, adapter=demo_repo.refs["scot"])])
    model.bank.acquire(demo_repo.refs["scot"], stream_id=9)  # wait for the load
    assert 9 in model.streams
    assert model.sweep(now=time.monotonic() + 31) == [9]
    assert 9 not in model.streams
    assert all(info.refcount == 0 for info in model.bank.snapshot().values())
    (res,) = model.execute([ChunkRequest(9, False, False, audio)])
    assert split_tag(res.error)[0] is ErrorCode.NO_STATE and "send START first" in res.error


def test_bad_requests_fail_alone(model, demo_repo):
    audio = demo_speech(np.random.default_rng(3), 1.0)
    nan = audio.copy()
    nan[3] = np.inf
    reqs = [
        ChunkRequest(20, True, True, audio),  # fine
        ChunkRequest(21, False, False, audio),  # no START
        ChunkRequest(22, True, False, np.zeros(16000 * 11, np.float32)),  # too long
        ChunkRequest(23, True, False, nan),  # Inf
        ChunkRequest(24, True, False, audio.astype(np.float64)),  # wrong dtype
        ChunkRequest(25, True, False, audio, adapter="not a ref"),  # malformed reference
        ChunkRequest(26, True, False, audio, adapter="nosuch@v1"),  # unknown adapter
        ChunkRequest(27, True, False, audio, latency="1_2"),  # unknown latency
    ]
    res = model.execute(reqs)
    assert res[0].error is None and res[0].final
    expected = [("no_state", "send START first"), ("bad_request", "exceeds the limit"),
                ("bad_request", "NaN or Inf"), ("bad_request", "float32 or int16"),
                ("bad_request", "invalid adapter"), ("adapter", "nosuch"),
                ("bad_request", "'1_2' is not in this model; served latencies")]
    for r, (code, text) in zip(res[1:], expected):
        got_code, message = split_tag(r.error or "")
        assert got_code == code and text in message, (code, text, r.error)
    assert not model.streams  # nothing half-open is left behind
