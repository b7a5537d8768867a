"""The GPU-ready engine on CPU: the stream-state pool, the device bank and the backends.

Every engine path runs here on the CPU: ONNX Runtime on host buffers, ONNX Runtime bound by pointer
to torch tensors (the binding its CUDA and TensorRT providers use) and the TorchScript steps (the
torch backend). The CUDA checks at the end run only where torch sees a GPU.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import soundfile as sf

from brogue.asr_reply import CAPACITY_ERROR
from brogue.engine.adapter_bank import BankTensors
from brogue.engine.decoding import ctc_greedy
from brogue.engine.memory import DeviceMemoryError, HostMemory, TorchMemory
from brogue.engine.metadata import ModelMeta
from brogue.engine.runner import StreamingRunner
from brogue.engine.state_pool import PoolFull, StatePool
from brogue.engine.stream import StreamState
from brogue.errors import ErrorCode, split_tag
from brogue.audio.mel import StreamingMel
from brogue.server.streaming_model import ChunkRequest, StreamingModel
from conftest import REPO

DEMO = REPO / "model_repo" / "exported" / "demo"
CLIPS = sorted((REPO / "tests" / "data" / "demo").glob("*.flac"))
ENGINES = [("cpu", None), ("cpu", "torch-cpu"), ("torch-cpu", None)]
ENGINE_IDS = ["ort-host", "ort-torch-pointers", "torchscript"]


def memories():
    return [HostMemory(), TorchMemory("cpu")]


@pytest.fixture(scope="module")
def audios():
    return [sf.read(str(c), dtype="float32")[0] for c in CLIPS]


def _host(memory, a):
    return np.asarray(memory.host(a))


# -- the pool ------------------------------------------------------------------------------------


@pytest.mark.parametrize("memory", memories(), ids=["host", "torch"])
def test_pool_hands_out_the_lowest_free_row_zeroed_and_refuses_when_full(memory):
    pool = StatePool(memory, 3, (2, 4, 5), (2, 5, 3), max_batch=2)
    assert [pool.allocate() for _ in range(3)] == [0, 1, 2]
    with pytest.raises(PoolFull, match=CAPACITY_ERROR):
        pool.allocate()
    pool.channel[1] = 7.0
    pool.length[1] = 9
    pool.release(1)
    with pytest.raises(ValueError, match="not allocated"):
        pool.release(1)
    assert pool.free == 1
    assert pool.allocate() == 1
    assert not _host(memory, pool.channel[1]).any() and int(_host(memory, pool.length)[1]) == 0


@pytest.mark.parametrize("memory", memories(), ids=["host", "torch"])
def test_a_batch_slices_consecutive_rows_gathers_others_and_stores_only_its_rows(memory):
    pool = StatePool(memory, 6, (2, 3, 4), (2, 4, 2), max_batch=4)
    for r in range(6):
        pool.allocate()
        pool.channel[r], pool.time[r], pool.length[r] = r + 0.5, -r, r
    before = [_host(memory, b).copy() for b in pool.buffers]

    b = pool.batch(np.array([2, 3, 4]))
    assert b.start == 2
    assert memory.pointer(b.inputs[0]) == memory.pointer(pool.channel[2])  # a view: nothing gathered
    g = pool.batch(np.array([0, 3, 5]))
    assert g.start == -1
    for buf, got in zip(before, g.inputs):
        assert np.array_equal(_host(memory, got), buf[[0, 3, 5]])

    for i, out in enumerate(g.outputs):
        out[...] = 100 + i
    g.store()
    after = [_host(memory, x) for x in pool.buffers]
    for i, (old, new) in enumerate(zip(before, after)):
        assert (new[[0, 3, 5]] == 100 + i).all()
        assert np.array_equal(new[[1, 2, 4]], old[[1, 2, 4]])  # other streams' caches untouched


@pytest.mark.parametrize("memory", memories(), ids=["host", "torch"])
def test_a_pool_too_big_for_memory_says_how_many_streams_fit(memory):
    shape = (24, 70, 1024)  # one 0.6 B stream's attention cache: 6.9 MB
    with pytest.raises(DeviceMemoryError, match=r"(\d+) streams fit; lower MAX_STREAMS") as e:
        StatePool(memory, 10_000_000, shape, (24, 1024, 8))
    row = 4 * (24 * 70 * 1024 + 24 * 1024 * 8) + 8
    fit = int(str(e.value).split(" streams fit")[0].rsplit(" ", 1)[1])
    assert 0 < fit <= memory.available_bytes() * 1.1 // row  # this host holds some, not ten million


# -- the bank on the device ----------------------------------------------------------------------


@pytest.mark.parametrize("memory", memories(), ids=["host", "torch"])
def test_writing_an_adapter_rewrites_its_slot_and_nothing_else(memory):
    bank = BankTensors(3, 8, 4, slots=4, memory=memory)
    rng = np.random.default_rng(0)
    a = [rng.standard_normal(s).astype(np.float32) for s in ((3, 8), (3, 8), (3, 2, 8), (3, 8, 2))]
    bank.write(1, *a)
    before = {s: bank.host_slot(s) for s in range(4)}
    b = [rng.standard_normal(s).astype(np.float32) for s in ((3, 8), (3, 8), (3, 4, 8), (3, 8, 4))]
    written = bank.bytes_written
    bank.write(2, *b)
    assert bank.bytes_written - written == bank.slot_bytes  # one slot's bytes moved
    for s in (0, 1, 3):
        for k, v in bank.host_slot(s).items():
            assert np.array_equal(v, before[s][k]), (s, k)
    got = bank.host_slot(2)
    assert np.array_equal(got["adapter_down"], b[2]) and np.array_equal(got["adapter_up"], b[3])
    bank.write(1, *a[:2], a[2][:, :1], a[3][:, :, :1])  # a smaller adapter: the rest of the slot is zeroed
    assert not bank.host_slot(1)["adapter_down"][:, 1:].any()
    bank.clear(2)
    assert np.array_equal(bank.host_slot(2)["adapter_ln_weight"], np.ones((3, 8), np.float32))
    with pytest.raises(IndexError):
        bank.write(0, *a)


# -- the engine ----------------------------------------------------------------------------------


def plain_onnx_runtime(audio: np.ndarray, packet: int) -> list[int]:
    """The demo model streamed alone the plain way: ``session.run`` with numpy caches carried by hand
    (the engine before the state pool), greedy CTC."""
    meta = ModelMeta.load(DEMO)
    lat = meta.latency(None)
    opts = ort.SessionOptions()
    sessions = {g: ort.InferenceSession(str(DEMO / g), opts, providers=["CPUExecutionProvider"])
                for g in (lat.first_graph, lat.steady_graph)}
    bank = BankTensors.for_model(meta, 1)
    ch, tm = meta.cache_shapes
    caches = [np.zeros((1, *ch), np.float32), np.zeros((1, *tm), np.float32), np.zeros(1, np.int64)]
    st = StreamState(stream_id=0, latency=lat, mel=StreamingMel(meta.mel), slot=0)
    last, tokens = np.array([-1]), []
    for pos in range(0, len(audio) + 1, packet):
        st.add_audio(audio[pos:pos + packet], end=pos + packet >= len(audio))
        while (chunk := st.next_chunk()) is not None:
            x = np.concatenate([np.zeros((chunk.features.shape[0], chunk.pad), np.float32), chunk.features], 1)
            out = sessions[lat.first_graph if chunk.first else lat.steady_graph].run(None, {
                "audio_signal": x[None], "length": np.array([x.shape[1]]), "cache_last_channel": caches[0],
                "cache_last_time": caches[1], "cache_last_channel_len": caches[2], "adapter_ids": np.array([0]),
                **bank.arrays})
            n = int(out[1][0]) if chunk.final else min(int(out[1][0]), lat.valid_out_len)
            tokens += ctc_greedy(out[0][:, :n], np.array([n]), last, meta.blank_id)[0].tokens
            caches = out[2:]
            st.advance(chunk)
        if st.finished:
            break
    return tokens


@pytest.mark.parametrize("provider,memory", ENGINES, ids=ENGINE_IDS)
def test_the_pool_engine_gives_the_plain_loops_tokens(provider, memory, audios):
    runner = StreamingRunner(DEMO, decoder="greedy", provider=provider, memory=memory)
    states = runner.transcribe(audios, packet=3840)
    for i, st in enumerate(states):
        assert st.tokens == plain_onnx_runtime(audios[i], 3840), CLIPS[i].name
    assert runner.pool.free == runner.pool.rows


@pytest.mark.parametrize("provider,memory", ENGINES, ids=ENGINE_IDS)
def test_streams_interleaved_in_any_order_give_the_tokens_they_give_alone(provider, memory, audios):
    """Streams come and go, send packets of different sizes, skip steps and share batches in ever
    different orders and compositions (rows reused, batches sliced and gathered): each one's tokens
    are the ones it gets streamed alone."""
    alone = StreamingRunner(DEMO, decoder="greedy")
    expected = [alone.transcribe([a])[0].tokens for a in audios]
    runner = StreamingRunner(DEMO, decoder="greedy", provider=provider, memory=memory, max_streams=8, max_batch=3)
    rng = np.random.default_rng(5)
    for round_ in range(2):
        order = rng.permutation(len(audios))
        live = {}  # clip index -> (state, position)
        waiting = list(order)
        done = {}
        while waiting or live:
            if waiting and (not live or rng.random() < 0.4):
                i = waiting.pop()
                live[i] = (runner.open(i), 0)
            work = []
            for i in list(live):
                if rng.random() < 0.3:
                    continue  # this stream sends nothing this step
                st, pos = live[i]
                n = int(rng.integers(400, 9000))
                end = pos + n >= len(audios[i])
                work.append((st, audios[i][pos:pos + n], end))
                live[i] = (st, pos + n)
            rng.shuffle(work)
            for i, o in runner.step(work).items():
                if o.finished:
                    done[i] = live.pop(i)[0].tokens
        assert [done[i] for i in range(len(audios))] == expected, f"round {round_}"
    assert runner.stats.max_rows == 3 and runner.pool.free == 8


def test_a_closed_stream_gives_its_row_back(audios):
    runner = StreamingRunner(DEMO, decoder="greedy", max_streams=2)
    a, b = runner.open("a"), runner.open("b")
    with pytest.raises(PoolFull):
        runner.open("c")
    runner.step([(a, audios[0][:8000], False)])
    runner.close(a)
    runner.close(a)  # twice is harmless
    c = runner.open("c")
    assert c.row == 0 and b.row == 1
    runner.close(b)
    runner.close(c)
    assert runner.pool.free == 2


def test_more_streams_than_rows_are_refused_and_live_streams_are_unharmed(audios):
    model = StreamingModel(DEMO, REPO / "model_repo" / "adapters", slots=2, max_streams=2, decoder="greedy")
    try:
        a, b = audios[0], audios[1]
        want = StreamingRunner(DEMO, decoder="greedy").transcribe([a, b])
        got = {1: [], 2: []}
        packet = 4000
        refused = []
        for pos in range(0, max(len(a), len(b)), packet):
            reqs = [ChunkRequest(c, pos == 0, pos + packet >= len(x), x[pos:pos + packet])
                    for c, x in ((1, a), (2, b)) if pos < len(x)]
            if pos == packet:  # a third stream while two are live
                reqs.append(ChunkRequest(3, True, False, a[:packet]))
            for req, res in zip(reqs, model.execute(reqs)):
                if req.corrid == 3:
                    refused.append(res.error)
                    continue
                assert res.error is None, res.error
                got[req.corrid] += res.tokens
        code, message = split_tag(refused[0])
        assert code is ErrorCode.CAPACITY and message.startswith(CAPACITY_ERROR) and "all 2 stream slots" in message
        assert [got[1], got[2]] == [st.tokens for st in want]
        (res,) = model.execute([ChunkRequest(3, True, True, a)])  # both ended: room again
        assert res.error is None and res.tokens == want[0].tokens
    finally:
        model.close()


# -- CUDA: only where there is a GPU -------------------------------------------------------------


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda(), reason="no CUDA device here: the torch-cuda engine was not run")
def test_the_cuda_engine_gives_the_cpu_engines_tokens(audios):
    cpu = StreamingRunner(DEMO, decoder="greedy").transcribe(audios)
    runner = StreamingRunner(DEMO, decoder="greedy", provider="torch-cuda")
    assert [st.tokens for st in runner.transcribe(audios)] == [st.tokens for st in cpu]
    assert runner.encoder.backend.device_bytes > 0
