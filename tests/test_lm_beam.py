"""The character LM (brogue.engine.lm) and streaming CTC beam search (brogue.engine.beam).

The LM must be a distribution for every context; the beam search must be append-only when
streamed, give the same text chunk by chunk as over all frames at once (when no pause forces a
commit), reduce to greedy decoding where greedy is exact, and actually use the LM.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brogue.engine.beam import BeamConfig, BeamState, CTCBeamSearch
from brogue.engine.lm import EOS, CharNgramLM, MixedLM, load_lm, read_text, write_text

TOKENS = [" ", *"abcdefghijklmnopqrstuvwxyz", "'"]
BLANK = len(TOKENS)
TEXT = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog", "the mat is red",
        "it's the cat's mat", "on the log the dog sat"] * 3


@pytest.fixture(scope="module")
def lm():
    return CharNgramLM(TEXT, order=5)


# -- the language model ------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="abcdeghmnorst' ", max_size=12), st.integers(1, 7))
def test_lm_is_a_distribution_in_every_context(text, order):
    m = CharNgramLM(TEXT, order=order)
    ctx = m.context(text)
    seen = sum(math.exp(m.logp(ctx, c)) for c in [*m.alphabet, EOS])
    unseen = math.exp(m.logp(ctx, "#"))  # any character not in the training text
    assert seen + unseen == pytest.approx(1.0, abs=1e-9)
    assert 0 < unseen < 0.2


def test_lm_prefers_seen_text(lm):
    assert lm.sentence_logp("the cat sat on the log") > lm.sentence_logp("teh cta tas no eht gol") + 10
    assert lm.sentence_logp("the dog") > lm.sentence_logp("the dgo")


def test_mixture_moves_towards_the_domain(lm):
    chars = "".join(TOKENS)  # both models know every character the acoustic model can write
    base = CharNgramLM(TEXT, order=5, alphabet=chars)
    domain = CharNgramLM(["administer warfarin daily", "warfarin dose adjusted"], order=3, alphabet=chars)
    mixed = MixedLM([(base, 0.5), (domain, 0.5)])
    assert mixed.sentence_logp("warfarin") > base.sentence_logp("warfarin") + 5
    for text in ("", "the ", "warf", "zzz"):
        ctx = mixed.context(text)
        assert sum(math.exp(mixed.logp(ctx, c)) for c in [*chars, EOS, "#"]) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="sum to 1"):
        MixedLM([(lm, 0.5), (domain, 0.6)])
    with pytest.raises(ValueError, match="window"):
        MixedLM([(lm, 0.5), (domain, 0.5)], window=-1)
    with pytest.raises(ValueError, match="temperature"):
        MixedLM([(lm, 0.5), (domain, 0.5)], window=4, temperature=0)


CHARS = "".join(TOKENS)
DOMAIN = ["administer warfarin daily", "warfarin dose adjusted", "begin heparin twice daily"]


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet="abcdefhinrstw' ", max_size=20), st.integers(1, 8), st.floats(0.5, 4))
def test_a_windowed_mixture_is_a_distribution_in_every_context(text, window, temperature):
    base = CharNgramLM(TEXT, order=5, alphabet=CHARS)
    mixed = MixedLM([(base, 0.7), (CharNgramLM(DOMAIN, order=3, alphabet=CHARS), 0.3)], window, temperature)
    assert mixed.order == 5 + window  # the context carries the window on top of the longest model's
    ctx = mixed.context(text)
    assert sum(math.exp(mixed.logp(ctx, c)) for c in [*CHARS, EOS, "#"]) == pytest.approx(1.0, abs=1e-9)


def test_windowed_weights_follow_the_recent_text():
    """The domain model's weight rises while the text reads like its own and falls while it reads
    like general text, so general sentences pay little for a domain LM being mixed in, and domain
    sentences gain at least as much as from fixed weights."""
    base = CharNgramLM(TEXT, order=5, alphabet=CHARS)
    domain = CharNgramLM(DOMAIN, order=3, alphabet=CHARS)
    fixed = MixedLM([(base, 0.5), (domain, 0.5)])
    windowed = MixedLM([(base, 0.5), (domain, 0.5)], window=6, temperature=2.0)

    def domain_weight(text):
        return math.exp(windowed._log_weights(windowed.context(text))[1])

    assert domain_weight("") == pytest.approx(0.5)  # no evidence yet: the prior
    assert domain_weight("begin warfa") > 0.9
    assert domain_weight("the cat sat on") < 0.1
    general, special = "the dog sat on the mat", "administer heparin daily"
    assert fixed.sentence_logp(general) < windowed.sentence_logp(general) < base.sentence_logp(general) + 1
    assert windowed.sentence_logp(special) > fixed.sentence_logp(special)
    # window 0: the fixed weights.
    zero = MixedLM([(base, 0.5), (domain, 0.5)], window=0)
    assert zero.order == 5 and zero.sentence_logp(general) == pytest.approx(fixed.sentence_logp(general))


def test_lm_text_round_trips_and_bad_input_is_refused(tmp_path):
    p = tmp_path / "lm.txt.gz"
    assert write_text(p, ["The  Cat", "", "sat^on$the mat"]) == 2
    assert read_text(p) == ["the cat", "sat on the mat"]
    assert write_text(tmp_path / "again.txt.gz", ["The  Cat", "", "sat^on$the mat"]) == 2
    assert (tmp_path / "again.txt.gz").read_bytes() == p.read_bytes()  # reproducible bytes
    with pytest.raises(ValueError, match="no text"):
        CharNgramLM(["", "  "])
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(b"\x1f\x8b not gzip at all")
    with pytest.raises(ValueError, match="unreadable"):
        load_lm(bad)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_lm(tmp_path / "none.txt.gz")


def test_load_lm_builds_once_per_file_version(tmp_path):
    p = tmp_path / "lm.txt"
    write_text(p, ["one two three"])
    a = load_lm(p, order=3)
    assert load_lm(p, order=3) is a
    write_text(p, ["four five six seven"])
    b = load_lm(p, order=3)
    assert b is not a and "f" in b.alphabet


# -- beam search --------------------------------------------------------------------------------

def frames_for(text: str, rng, sharp: float = 6.0, noise: float = 1.0, blanks=(1, 3)) -> np.ndarray:
    """Log-probabilities of a CTC path spelling ``text``: one peaked frame per character and a few
    blank frames between, with random competitors."""
    rows = []
    for ch in text:
        for _ in range(rng.integers(*blanks)):
            rows.append(BLANK)
        rows.append(TOKENS.index(ch))
    rows += [BLANK] * 3
    logits = rng.normal(0, noise, (len(rows), len(TOKENS) + 1))
    logits[np.arange(len(rows)), rows] += sharp
    return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


def decode(search, lp, chunk: int | None = None) -> tuple[str, list]:
    state, tokens, frames = BeamState(), [], []
    chunk = chunk or len(lp)
    for i in range(0, max(len(lp), 1), chunk):
        d = search.step(state, lp[i:i + chunk], final=i + chunk >= len(lp))
        tokens += d.tokens
        frames += [i + f for f in d.frames]
        assert len(d.blank_probs) == len(lp[i:i + chunk])
    return "".join(TOKENS[k] for k in tokens).strip(), frames


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 9))
def test_streaming_equals_offline_without_forced_commits(lm, seed, chunk):
    rng = np.random.default_rng(seed)
    lp = frames_for(TEXT[seed % 6], rng, sharp=2.5, noise=1.5)
    search = CTCBeamSearch(TOKENS, BLANK, lm, BeamConfig(silence_frames=10**6, max_delay=10**6))
    (text, frames), (whole, _) = decode(search, lp, chunk), decode(search, lp)
    assert text == whole
    assert frames == sorted(frames)  # token times never go back


def test_clear_audio_decodes_exactly_and_frames_point_at_the_peaks(lm):
    rng = np.random.default_rng(0)
    lp = frames_for("the dog sat on the mat", rng, sharp=12, noise=0.5)
    text, frames = decode(CTCBeamSearch(TOKENS, BLANK, lm, BeamConfig()), lp, chunk=4)
    assert text == "the dog sat on the mat"
    assert frames == sorted(frames) and all(lp[f].argmax() != BLANK for f in frames)


def test_without_an_lm_the_beam_agrees_with_greedy_on_sharp_frames(lm):
    from brogue.engine.decoding import ctc_greedy
    rng = np.random.default_rng(1)
    for text in TEXT[:6]:
        lp = frames_for(text, rng, sharp=9)
        greedy = ctc_greedy(lp[None], np.array([len(lp)]), np.array([-1]), BLANK)[0].tokens
        got, _ = decode(CTCBeamSearch(TOKENS, BLANK, lm, BeamConfig(alpha=0.0, beta=0.0)), lp)
        assert got == "".join(TOKENS[k] for k in greedy).strip()


def test_the_lm_fixes_a_misspelling_the_acoustics_are_unsure_of(lm):
    rng = np.random.default_rng(2)
    lp = frames_for("the dog sat", rng, sharp=9, noise=0.1)
    # make the "o" of dog ambiguous with "a" (acoustics slightly prefer "dag")
    o = [t for t in range(len(lp)) if lp[t].argmax() == TOKENS.index("o")][0]
    lp[o] = np.log(np.full(len(TOKENS) + 1, 1e-4))
    lp[o, TOKENS.index("a")], lp[o, TOKENS.index("o")] = np.log(0.55), np.log(0.44)
    greedy, _ = decode(CTCBeamSearch(TOKENS, BLANK, lm, BeamConfig(alpha=0.0, beta=0.0)), lp)
    fused, _ = decode(CTCBeamSearch(TOKENS, BLANK, lm, BeamConfig(alpha=1.0, beta=1.0)), lp)
    assert greedy == "the dag sat" and fused == "the dog sat"


def test_repeated_letters_need_a_blank_between_them(lm):
    rng = np.random.default_rng(3)
    lp = frames_for("it's the mat", rng, sharp=10)
    doubled = frames_for("a cat and a dog", rng, sharp=10, blanks=(1, 2))
    for x, want in ((lp, "it's the mat"), (doubled, "a cat and a dog")):
        assert decode(CTCBeamSearch(TOKENS, BLANK, lm, BeamConfig()), x, chunk=3)[0] == want


def test_a_pause_commits_the_words_before_it(lm):
    rng = np.random.default_rng(4)
    speech = frames_for("the cat sat", rng, sharp=8)
    silence = np.full((12, len(TOKENS) + 1), np.log(1e-6))
    silence[:, BLANK] = 0.0
    search = CTCBeamSearch(TOKENS, BLANK, lm, BeamConfig(silence_frames=10))
    state = BeamState()
    first = search.step(state, speech)
    pause = search.step(state, silence)
    out = "".join(TOKENS[k] for k in first.tokens + pause.tokens).strip()
    assert out == "the cat sat" and len(state.hyps) == 1 and not next(iter(state.hyps))
    assert search.step(state, silence, final=True).tokens == []


def test_output_is_append_only_and_committed_early(lm):
    """Tokens leave the beam as soon as every hypothesis agrees: on clear speech most of the text
    is out before the stream ends."""
    rng = np.random.default_rng(5)
    lp = frames_for("the cat sat on the mat and the dog sat on the log", rng, sharp=10)
    search = CTCBeamSearch(TOKENS, BLANK, lm, BeamConfig())
    state, before_end = BeamState(), 0
    for i in range(0, len(lp) - 6, 6):
        before_end += len(search.step(state, lp[i:i + 6]).tokens)
    assert before_end >= 0.8 * len("the cat sat on the mat and the dog sat on the log")


def test_bad_settings_are_refused():
    for bad in ({"beam": 0}, {"domain_window": -1}, {"domain_temperature": 0.0}):
        with pytest.raises(ValueError, match="invalid beam"):
            BeamConfig.from_dict(bad)
    assert BeamConfig.from_dict({"alpha": 0.5, "file": "lm.txt.gz"}).alpha == 0.5
