"""asr_streaming through a real tritonserver: isolation, mixed batches, hot swap, eviction, faults.

The server is the tritonserver binary of nvidia-pytriton with its python backend, on loopback, serving
the committed demo model with its adapters (and random ones) from a store. Each stream's tokens are
compared with the in-process reference runner (:class:`StreamingRunner`) streaming that utterance alone.
"""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from brogue.adapters import publish_adapter
from brogue.clients.triton_sequence import TritonSequence
from brogue.server.tritonserver import TritonProcess
from conftest import TEST_EXIT_TIMEOUT, demo_speech, model_config, random_adapter_arrays, reference_run

pytestmark = pytest.mark.nemo

LM_TEXT = ["the cat sat on the mat", "a dog and a cat", "put the log on the fire", "it's a red mat"] * 5


@pytest.fixture(scope="module")
def triton(demo_repo):
    # A second copy of the model with a small bank and a short idle timeout, for eviction and sweeping.
    model_config(demo_repo.root, "asr_small", BANK_SLOTS="5", IDLE_TIMEOUT_S="3")
    # A third on a copy of the exported model with a character LM: beam search in the server.
    import shutil

    from brogue.export.lm import build_lm

    lm_dir = demo_repo.root / "exported" / "demo_lm"
    if not lm_dir.exists():
        shutil.copytree(demo_repo.model_dir, lm_dir)
        (demo_repo.root / "lm.txt").write_text("\n".join(LM_TEXT) + "\n")
        build_lm(lm_dir, [demo_repo.root / "lm.txt"], order=5, alpha=0.3, beta=2.0)
    model_config(demo_repo.root, "asr_lm", MODEL_DIR="exported/demo_lm", DECODER="lm")
    server = TritonProcess(demo_repo.root, models=("asr_streaming", "asr_small", "asr_lm"),
                           exit_timeout=TEST_EXIT_TIMEOUT)
    server.start(timeout=240)
    yield server
    server.stop()


def reference_tokens(demo_repo, audio, arrays=None):
    """Tokens of ``audio`` alone through the in-process runner, with ``arrays`` in slot 1 (or base)."""
    return reference_run(demo_repo, audio, arrays)[1]


def stream(url, corrid, audio, *, adapter="", model="asr_streaming", rng=None, pace=0.0, jitter=0.0,
           on_reply=None):
    """Stream ``audio`` in random packets with random pauses; return (tokens, replies)."""
    rng = rng or random.Random(corrid)
    tokens, replies, pos = [], [], 0
    with TritonSequence(url, corrid, model=model, adapter=adapter) as seq:
        while True:
            n = rng.randint(2000, 12000)
            chunk = audio[pos:pos + n]
            pos += n
            end = pos >= len(audio)
            r = seq.send(chunk, end=end)
            replies.append(r)
            tokens += r.tokens
            if on_reply:
                on_reply(r)
            if end:
                return tokens, replies
            time.sleep(pace * n / 16000 + rng.uniform(0, jitter))


def run_threads(targets):
    """Run callables in threads; return their results (re-raising the first failure)."""
    results, errors = [None] * len(targets), []

    def wrap(i, fn):
        try:
            results[i] = fn()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(i, fn)) for i, fn in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    if errors:
        raise errors[0]
    return results


def test_sixteen_streams_over_three_adapters_and_base_are_isolated(triton, demo_repo):
    rng = np.random.default_rng(1)
    adapters = [None, "scot", "carib", "med"]
    audios = [demo_speech(rng, rng.uniform(1.5, 4.0)) for _ in range(16)]
    names = [adapters[i % 4] for i in range(16)]
    got = run_threads([
        (lambda i=i: stream(triton.grpc_url, 1000 + i, audios[i], adapter=demo_repo.refs[names[i]] if names[i] else "",
                            jitter=0.03)[0])
        for i in range(16)
    ])
    for i in range(16):
        want = reference_tokens(demo_repo, audios[i], demo_repo.arrays[names[i]] if names[i] else None)
        assert got[i] == want, f"stream {i} (adapter {names[i]})"
    assert sum(map(len, got)) > 50
    # Distinct adapters give distinct outputs on the same audio (else isolation proves nothing).
    a = audios[0]
    assert len({tuple(reference_tokens(demo_repo, a, demo_repo.arrays[n] if n else None)) for n in adapters}) == 4
    time.sleep(16)  # the sweeper logs the counters every IDLE_TIMEOUT_S / 4
    log = triton.log_tail(400)
    # Every model of the server logs such a line; the idle ones (asr_small, asr_lm) log zeros.
    stats = [line for line in log.splitlines() if "asr_streaming stats:" in line and "executes=" in line
             and "executes=0 " not in line]
    assert stats, log[-2000:]
    fields = dict(kv.split("=") for kv in stats[-1].split("stats:")[1].split())
    assert int(fields["max_requests_per_execute"]) > 1, stats[-1]
    assert int(fields["mixed_adapter_runs"]) > 0, stats[-1]
    print(stats[-1])


def test_lm_beam_search_in_the_server_equals_the_in_process_runner(triton, demo_repo):
    """Streams on a model with an LM, on the base model and on an adapter carrying a domain LM
    (published while the server runs), each give exactly the in-process runner's tokens."""
    from brogue.engine.lm import load_lm
    from brogue.engine.runner import StreamingRunner

    lm_dir = demo_repo.root / "exported" / "demo_lm"
    arrays = random_adapter_arrays(np.random.default_rng(77), 6, 144, 8)
    publish_adapter(demo_repo.store_dir, arrays, name="dom-lm", version="v1", kind="domain",
                    base_fingerprint=demo_repo.fingerprint,
                    lm_sentences=["give warfarin daily", "stop the heparin"] * 4, lm_order=4, lm_weight=0.6)
    rng = np.random.default_rng(8)
    audios = [demo_speech(rng, rng.uniform(1.5, 3.5)) for _ in range(6)]
    adapters = ["", "dom-lm@v1"] * 3
    got = run_threads([(lambda i=i: stream(triton.grpc_url, 3000 + i, audios[i], adapter=adapters[i],
                                           model="asr_lm", jitter=0.02)[0]) for i in range(6)])
    ref = StreamingRunner(lm_dir, slots=2)
    assert ref.decoder == "lm"
    ref.bank.write(1, arrays["ln_weight"], arrays["ln_bias"], arrays["down"], arrays["up"])
    ref.set_slot_lm(1, load_lm(demo_repo.store_dir / "dom-lm" / "v1" / "lm.txt.gz", 4, alphabet=ref.lm_alphabet), 0.6)
    for i in range(6):
        (st,) = ref.transcribe([audios[i]], [1 if adapters[i] else 0])
        assert got[i] == st.tokens, f"stream {i} ({adapters[i] or 'base'})"
    assert sum(map(len, got)) > 10
    # The LM changes the output: the same audio on the greedy model differs somewhere.
    greedy = [reference_tokens(demo_repo, a) for a in audios[::2]]
    assert greedy != got[::2]


def test_hot_swap_during_live_streams(triton, demo_repo):
    """Publish medical@v2 while 16 streams run on medical@v1 and others: none fails, old streams stay
    on v1, new ones get v2, and no model reload happens."""
    rng = np.random.default_rng(2)
    old_names = ["med", "scot", "carib", None] * 4
    old_audio = [demo_speech(rng, 6.0) for _ in range(16)]
    new_audio = [demo_speech(rng, 2.0) for _ in range(4)]
    v2 = random_adapter_arrays(rng, 6, 144, 8)
    published = {}
    first_v2 = []

    def old(i):
        ref = demo_repo.refs[old_names[i]] if old_names[i] else ""
        return stream(triton.grpc_url, 2000 + i, old_audio[i], adapter=ref, pace=1.0)[0]

    def swap():
        time.sleep(1.5)  # the old streams are live by now
        publish_adapter(demo_repo.store_dir, v2, name="medical", version="v2", kind="test",
                        base_fingerprint=demo_repo.fingerprint)
        published["t"] = time.monotonic()
        toks = []

        def new(j):
            def seen(r):
                if r.adapter_ready and r.frames_done and not first_v2:
                    first_v2.append(time.monotonic())
            return stream(triton.grpc_url, 2100 + j, new_audio[j], adapter="medical@v2", on_reply=seen)[0]

        toks[:] = run_threads([lambda j=j: new(j) for j in range(4)])
        return toks

    results = run_threads([lambda i=i: old(i) for i in range(16)] + [swap])
    old_tokens, new_tokens = results[:16], results[16]
    for i in range(16):
        want = reference_tokens(demo_repo, old_audio[i], demo_repo.arrays[old_names[i]] if old_names[i] else None)
        assert old_tokens[i] == want, f"old stream {i} ({old_names[i]})"
    for j in range(4):
        assert new_tokens[j] == reference_tokens(demo_repo, new_audio[j], v2), f"new stream {j}"
        assert new_tokens[j] != reference_tokens(demo_repo, new_audio[j], demo_repo.arrays["med"])
    delay = first_v2[0] - published["t"]
    print(f"hot swap: publish -> first chunk served with medical@v2: {delay * 1000:.0f} ms")
    assert "successfully loaded 'asr_streaming'" in triton.log_tail(100000) and \
        triton.log_tail(100000).count("successfully loaded 'asr_streaming'") == 1  # no reload


def test_eviction_never_takes_a_live_adapter_and_a_full_bank_is_a_clear_error(triton, demo_repo):
    """asr_small has 4 adapter slots; 8 adapters are used over time."""
    rng = np.random.default_rng(3)
    url, names = triton.grpc_url, list(demo_repo.refs)
    live = []
    audio = demo_speech(rng, 3.0)
    for k, name in enumerate(names[:4]):  # four live streams fill the bank
        seq = TritonSequence(url, 3000 + k, model="asr_small", adapter=demo_repo.refs[name])
        live.append((seq, name, list(seq.send(audio[:8000]).tokens)))
    with TritonSequence(url, 3100, model="asr_small", adapter=demo_repo.refs[names[4]]) as seq:
        with pytest.raises(InferenceServerException, match="adapter slot"):
            seq.send(audio[:8000])
    # The live streams finish on their own adapters: none was evicted for the refused one.
    for seq, name, tokens in live:
        tokens += seq.send(audio[8000:], end=True, start=False).tokens
        seq.close()
        assert tokens == reference_tokens(demo_repo, audio, demo_repo.arrays[name]), name
    # Now the other four adapters evict the idle ones, one after another, each correct.
    for k, name in enumerate(names[4:]):
        toks, _ = stream(url, 3200 + k, audio, adapter=demo_repo.refs[name], model="asr_small")
        assert toks == reference_tokens(demo_repo, audio, demo_repo.arrays[name]), name
    # And the first four, evicted meanwhile, come back correctly.
    for k, name in enumerate(names[:2]):
        toks, _ = stream(url, 3300 + k, audio, adapter=demo_repo.refs[name], model="asr_small")
        assert toks == reference_tokens(demo_repo, audio, demo_repo.arrays[name]), name


def test_faults_get_clear_errors_and_others_go_on(triton, demo_repo):
    url = triton.grpc_url
    rng = np.random.default_rng(4)
    audio = demo_speech(rng, 2.0)
    want = reference_tokens(demo_repo, audio, demo_repo.arrays["scot"])

    def healthy(corrid):
        assert stream(url, corrid, audio, adapter=demo_repo.refs["scot"])[0] == want

    # A corrupt adapter (bytes flipped after publishing) and an incompatible one (another base).
    publish_adapter(demo_repo.store_dir, random_adapter_arrays(rng, 6, 144, 8), name="broken", version="v1",
                        base_fingerprint=demo_repo.fingerprint)
    path = demo_repo.store_dir / "broken" / "v1" / "adapter.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    publish_adapter(demo_repo.store_dir, random_adapter_arrays(rng, 6, 144, 8), name="alien", version="v1",
                    base_fingerprint="sha256:" + "0" * 64)
    # A missing adapter fails on START; a bad file fails when its background load does, which the
    # stream's next chunk reports (execute() never waits for a load).
    for ref, message in [("broken@v1", "SHA-256"), ("alien@v1", "base"), ("nosuch@v1", "nosuch")]:
        with TritonSequence(url, 4000 + len(ref), adapter=ref) as seq:
            with pytest.raises(InferenceServerException, match=message):
                assert not seq.send(audio[:4000]).adapter_ready
                time.sleep(0.3)
                seq.send(audio[4000:8000], start=False)
    healthy(4100)

    # A request without START.
    with TritonSequence(url, 4200) as seq:
        with pytest.raises(InferenceServerException, match="START"):
            seq.send(audio[:4000], start=False)
    # A wrong dtype (refused by Triton against config.pbtxt) and an oversized chunk.
    with TritonSequence(url, 4300) as seq:
        with pytest.raises(InferenceServerException, match="(?i)data.?type|dtype|TYPE_FP32|INT32"):
            seq.send(np.zeros(4000, dtype=np.int32), input_name="AUDIO")
    with TritonSequence(url, 4301) as seq:
        with pytest.raises(InferenceServerException, match="exceeds the limit"):
            seq.send(np.zeros(16000 * 11, dtype=np.float32))
    with TritonSequence(url, 4302) as seq:
        bad = audio[:4000].copy()
        bad[7] = np.nan
        with pytest.raises(InferenceServerException, match="NaN"):
            seq.send(bad)
    healthy(4400)

    # A sequence abandoned without END is swept after IDLE_TIMEOUT_S (3 s on asr_small) and its
    # state is gone: the next chunk is refused, and the counters show it.
    seq = TritonSequence(url, 4500, model="asr_small", adapter=demo_repo.refs["scot"])
    seq.send(audio[:8000])
    time.sleep(6)
    with pytest.raises(InferenceServerException, match="START"):
        seq.send(audio[8000:16000], start=False)
    seq.close()
    assert "sequence 4500 idle" in triton.log_tail(100000)
    healthy(4600)


def test_int16_pcm_input_equals_float(triton, demo_repo):
    rng = np.random.default_rng(5)
    audio = demo_speech(rng, 2.0)
    pcm = np.clip(np.round(audio * 32768), -32768, 32767).astype(np.int16)
    as_float = pcm.astype(np.float32) / 32768.0
    with TritonSequence(triton.grpc_url, 5000) as seq:
        got = seq.send(pcm, end=True).tokens
    assert got == reference_tokens(demo_repo, as_float)
