"""Word boosting: the context graph's scoring, the request limits, and boosted decoding of the demo
model on speech where the base model misses the phrase, in process and through a real tritonserver
and gateway (Riva ``speech_contexts``, the WebSocket ``boost`` field, a tenant's phrase list).

The clips are drug names read by espeak-ng (a Debian package `make test` installs), which the demo
model writes as several words ("met form in") unless boosted.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import grpc
import numpy as np
import pytest
import riva.client
import soundfile as sf

from brogue.boosting import MAX_PHRASE_CHARS, MAX_PHRASES, BoostError, BoostPhrase, from_wire, merge, \
    phrases_from_prompt, to_wire, validate
from brogue.engine.context_graph import ContextGraph
from brogue.engine.phrases import PhraseError, PhraseTokenizer
from brogue.engine.runner import StreamingRunner
from conftest import DEMO_KEYS, DEMO_REPO
from test_riva import asr, streaming_config
from test_websocket import pcm16, stream_ws

DEMO = DEMO_REPO / "exported" / "demo"
# (sentence, the phrase in it); the base model misses each phrase (checked below)
SENTENCES = [("add gabapentin for the pain", "gabapentin"), ("start metformin with food", "metformin")]
ABSENT = "atorvastatin"  # boosted on every clip, said in none
BOOST = 16.0


# -- the context graph ------------------------------------------------------------------------------

def test_a_phrase_earns_per_token_keeps_it_when_complete_and_gives_back_one_token_when_left():
    g = ContextGraph([([1, 2, 3], 2.0)])
    d1, s1 = g.step(g.start, 1)
    d2, s2 = g.step(s1, 2)
    assert (d1, d2) == (2.0, 2.0)
    d3, s3 = g.step(s2, 3)
    assert d3 == 2.0 and s3 == 0  # complete: the bonus stays, the state restarts
    back, s = g.step(s2, 9)
    assert back == -2.0 and s == 0  # left after two tokens: the last token's bonus is given back
    assert g.finish(s2) == -2.0 and g.finish(0) == 0.0


def test_failure_links_fall_back_to_the_longest_suffix_that_is_a_prefix():
    g = ContextGraph([([1, 2, 3], 1.0), ([2, 3, 4], 1.0)])
    _, s = g.step(0, 1)
    _, s = g.step(s, 2)  # "1 2": also the start of "2 3 4"
    d, s = g.step(s, 3)  # "1 2 3" completes the first phrase
    assert d == 1.0 and s == 0
    _, s = g.step(0, 1)
    _, s = g.step(s, 2)
    d, s = g.step(s, 4)  # "1 2 4": no phrase continues; nothing shorter matches either
    assert d == -1.0 and s == 0
    _, s = g.step(0, 1)
    _, s = g.step(s, 1)  # "1 1": the second 1 starts over
    assert g.score[s] == 1.0


def test_greedy_deltas_score_every_token_and_the_anchor_and_first_token_earn_nothing():
    tok = PhraseTokenizer([" ", "a", "b", "c"], "char")
    g = tok.graph((BoostPhrase("abc", 4.0), BoostPhrase("c", 4.0)))
    d = g.deltas(g.start, 5)  # after a space (a new stream)
    assert d[1] == 0.0 and d[0] == 0.0  # "a" starts "abc" but earns nothing; nor does the space
    assert d[3] == 1.0  # a one-token phrase earns on its only token
    s = g.step(g.start, 1)[1]
    d = g.deltas(s, 5)
    assert d[2] == 1.0 and d[3] == 0.0 and d[0] == 0.0  # "b" goes on; leaving after "a" gives back nothing
    s = g.step(s, 2)[1]
    d = g.deltas(s, 5)
    assert d[3] == 1.0 and d[1] == -1.0 and d[0] == -1.0  # "c" completes; "a" or a space leave it


# -- requests ----------------------------------------------------------------------------------------

def test_requests_are_validated_merged_and_carried_as_json():
    p = validate(["  Metformin ", ("heparin", 3), {"phrase": "Metformin", "boost": 12}, {"text": ""}])
    assert p == (BoostPhrase("metformin", 12.0), BoostPhrase("heparin", 3.0))
    assert from_wire(to_wire(p)) == p
    assert merge(p, (BoostPhrase("heparin", 9.0),)) == (BoostPhrase("metformin", 12.0), BoostPhrase("heparin", 9.0))
    assert [x.text for x in phrases_from_prompt("Acme Cloud, zyrtec;\nwarfarin")] == ["acme cloud", "zyrtec", "warfarin"]
    assert [x.text for x in phrases_from_prompt('Dr. Smith, welcome! "Zyrtec"?')] == ["dr", "smith", "welcome", "zyrtec"]
    for bad, what in (([("x", -1)], "not a number"), ([("x", float("nan"))], "not a number"), ([("x", True)], "not a number"),
                      ([3], "must be text"), (["x" * (MAX_PHRASE_CHARS + 1)], "characters"),
                      ([f"p{i}" for i in range(MAX_PHRASES + 1)], "more than")):
        with pytest.raises(BoostError, match=what):
            validate(bad)
    with pytest.raises(BoostError):
        from_wire("{not json")


def test_a_phrase_the_vocabulary_cannot_write_is_refused_by_name():
    from brogue.engine.metadata import ModelMeta

    tok = PhraseTokenizer.for_model(ModelMeta.load(DEMO), DEMO)
    with pytest.raises(PhraseError, match="cannot write: '7é'"):
        tok.graph((BoostPhrase("café 7", 8.0),))


# -- decoding the demo model --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """The sentences as 16 kHz float32 audio (and PCM16 WAV files)."""
    assert shutil.which("espeak-ng") and shutil.which("sox"), "espeak-ng and sox are needed (make test installs them)"
    d = tmp_path_factory.mktemp("boost")
    out = []
    for i, (text, phrase) in enumerate(SENTENCES):
        raw, wav = d / f"{i}.raw.wav", d / f"{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text], check=True)
        subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav)], check=True)
        audio, _ = sf.read(wav, dtype="float32")
        out.append((audio, phrase, wav))
    return out


def _words(runner, audio, phrases=()):
    (st,) = runner.transcribe([audio], boosts=[validate(phrases)])
    return runner.detok.decode(st.tokens).split()


@pytest.mark.parametrize("decoder", ["greedy", "lm"])
def test_boosting_fixes_a_missed_phrase_and_never_inserts_an_absent_one(clips, decoder):
    runner = StreamingRunner(DEMO, decoder=decoder)
    for audio, phrase, _ in clips:
        plain = _words(runner, audio)
        assert phrase not in plain, (decoder, plain)  # else the clip proves nothing
        assert phrase in _words(runner, audio, [(phrase, BOOST)]), decoder
        assert _words(runner, audio, [(ABSENT, BOOST)]).count(ABSENT) == 0
        assert _words(runner, audio, [(ABSENT, 0.0)]) == plain  # boost 0 does nothing


def test_boosting_is_per_stream_inside_a_batch(clips):
    runner = StreamingRunner(DEMO, decoder="greedy")
    audios = [a for a, _, _ in clips]
    phrase = clips[1][1]
    alone = [runner.detok.decode(s.tokens) for s in runner.transcribe(audios)]
    mixed = runner.transcribe(audios, boosts=[(), validate([(phrase, BOOST)])])
    texts = [runner.detok.decode(s.tokens) for s in mixed]
    assert texts[0] == alone[0]  # the unboosted row is untouched
    assert phrase in texts[1].split() and phrase not in alone[1].split()


# -- through Triton and the gateway ---------------------------------------------------------------

def test_riva_speech_contexts_and_the_websocket_boost_field(gateway, clips):
    audio, phrase, wav = clips[1]
    service = asr(gateway, DEMO_KEYS["base"])
    data = wav.read_bytes()

    def riva_text(contexts):
        config = streaming_config(wav)
        for phrases, boost in contexts:
            riva.client.add_word_boosting_to_config(config, phrases, boost)
        resp = service.offline_recognize(data, config)
        return " ".join(r.alternatives[0].transcript for r in resp.results).split()

    assert phrase not in riva_text([])
    assert phrase in riva_text([([phrase], BOOST)])
    runner = StreamingRunner(DEMO, decoder="greedy")  # served greedy (conftest's repository)
    assert riva_text([([phrase], BOOST)]) == _words(runner, pcm16(audio) / np.float32(32768), [(phrase, BOOST)])

    pcm = pcm16(audio).tobytes()
    config = {"type": "config", "sample_rate": 16000, "encoding": "pcm16", "boost": [{"phrase": phrase, "boost": BOOST}]}
    msgs = asyncio.run(stream_ws(gateway.ws_url, DEMO_KEYS["base"], pcm, config=config))
    assert phrase in " ".join(m["transcript"] for m in msgs if m["type"] == "final").split()

    # over the limits: a clear refusal on both APIs
    config["boost"] = [f"phrase {i}" for i in range(MAX_PHRASES + 1)]
    msgs = asyncio.run(stream_ws(gateway.ws_url, DEMO_KEYS["base"], pcm, config=config))
    assert msgs[0]["type"] == "error" and msgs[0]["code"] == "bad_request" and "boost phrases" in msgs[0]["message"]
    with pytest.raises(grpc.RpcError) as e:
        c = streaming_config(wav)
        riva.client.add_word_boosting_to_config(c, ["x" * (MAX_PHRASE_CHARS + 1)], 5.0)
        service.offline_recognize(data, c)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "characters" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:  # a phrase the model cannot write: refused by the model
        c = streaming_config(wav)
        riva.client.add_word_boosting_to_config(c, ["naïve"], 5.0)
        service.offline_recognize(data, c)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "cannot write" in e.value.details()


def test_a_tenants_phrases_come_from_the_tenants_file():
    from brogue.server.tenants import parse_tenants

    text = ('[tenants.pharma]\napi_keys_sha256 = ["' + "a" * 64 + '"]\nadapter = ""\n'
            'boost = ["Metformin", { phrase = "heparin", boost = 12 }]\n')
    tenants, _ = parse_tenants(text)
    assert tenants["pharma"].boost == (BoostPhrase("metformin", 8.0), BoostPhrase("heparin", 12.0))
    with pytest.raises(ValueError, match="tenant pharma: boost"):
        parse_tenants(text.replace("boost = 12", "boost = 99"))


def test_a_tenants_phrases_set_through_the_admin_api_reach_its_new_streams(gateway, clips, tmp_path):
    import os
    import sys

    from brogue.clients.admin import AdminClient, AdminClientError
    from conftest import ADMIN_TOKEN, REPO

    audio, phrase, _ = clips[0]
    pcm = pcm16(audio).tobytes()

    def final_words():
        msgs = asyncio.run(stream_ws(gateway.ws_url, DEMO_KEYS["base"], pcm))
        return " ".join(m["transcript"] for m in msgs if m["type"] == "final").split()

    admin = f"127.0.0.1:{gateway.admin_port}"
    assert phrase not in final_words()
    env = {**os.environ, "BROGUE_ADMIN_TOKEN": ADMIN_TOKEN}
    out = subprocess.run([sys.executable, "-m", "brogue.cli", "adapters", "boost", "base", f"{phrase}:{BOOST:g}",
                          "acme cloud", "--admin", admin], capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    said = out.stdout + out.stderr  # the console writes to stderr
    assert f"{phrase} ({BOOST:g})" in said and "acme cloud (8)" in said
    try:
        assert f'phrase = "{phrase}", boost = {BOOST:g}' in gateway.tenants_file.read_text()
        assert phrase in final_words()  # the tenant's list, with no phrase in the request
        with AdminClient(admin, ADMIN_TOKEN) as c:
            t = next(t for t in c.tenants() if t.name == "base")
            assert [(p.phrase, p.boost) for p in t.boost] == [(phrase, BOOST), ("acme cloud", 8.0)]
            before = gateway.tenants_file.read_text()
            for bad, code, what in (([("x" * 200, 1.0)], "INVALID_ARGUMENT", "characters"),
                                    ([("naïve", 1.0)], "INVALID_ARGUMENT", "cannot write"),
                                    ([("ok", 80.0)], "INVALID_ARGUMENT", "not a number in")):
                with pytest.raises(AdminClientError) as e:
                    c.set_boost("base", bad)
                assert e.value.code == code and what in str(e.value), (bad, e.value)
            with pytest.raises(AdminClientError) as e:
                c.set_boost("nobody", [("ok", 1.0)])
            assert e.value.code == "NOT_FOUND"
            assert gateway.tenants_file.read_text() == before  # a refused request writes nothing
    finally:
        with AdminClient(admin, ADMIN_TOKEN) as c:
            assert list(c.set_boost("base", []).boost) == []
    assert phrase not in final_words()


def test_rnnt_greedy_with_a_sentencepiece_vocabulary_boosts_through_the_exported_tokenizer(tmp_path):
    """A tiny random RNNT model with a BPE vocabulary (export path of any NeMo RNNT checkpoint): the
    phrase is tokenized by the exported tokenizer.model, and the greedy RNNT loop writes it when
    boosted hard, in its own row only."""
    import sentencepiece as spm
    import torch

    from brogue.export.configs import build_model
    from brogue.export.nemo_export import export_model
    from nemo_reference import make_talkative

    text = ["patients received furosemide and metformin twice a day", "the quick brown fox jumps"] * 30
    (tmp_path / "text.txt").write_text("\n".join(text))
    spm.SentencePieceTrainer.train(input=str(tmp_path / "text.txt"), model_prefix=str(tmp_path / "tokenizer"),
                                   vocab_size=40, model_type="bpe", character_coverage=1.0, bos_id=-1, eos_id=-1)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    (tmp_path / "vocab.txt").write_text("".join(sp.id_to_piece(i) + "\n" for i in range(sp.get_piece_size())))
    torch.manual_seed(0)
    model = build_model("rnnt", tokenizer_dir=tmp_path, d_model=64, n_layers=2, n_heads=2, att_context_size=[16, 7])
    make_talkative(model)
    export_model(model, tmp_path / "m", head="rnnt", max_adapter_dim=8)
    runner = StreamingRunner(tmp_path / "m")
    assert runner.phrases.encode("metformin") == sp.encode("metformin")
    rng = np.random.default_rng(0)
    audios = [(rng.standard_normal(32000) * 0.1).astype(np.float32) for _ in range(2)]
    plain = [runner.detok.decode(s.tokens) for s in runner.transcribe(audios)]
    assert "metformin" not in plain[1]
    boosted = runner.transcribe(audios, boosts=[(), validate([("metformin", 50.0)])])
    texts = [runner.detok.decode(s.tokens) for s in boosted]
    assert texts[0] == plain[0] and "metformin" in texts[1], (plain, texts)
    with pytest.raises(PhraseError, match="does not know"):
        runner.phrases.encode("zürich")
