"""The bench's ratios: oriented so that above 1 is better, paired per round, median and range."""

from brogue.bench.compare import ratio, ratios, summarise
from brogue.bench.report import ratio_text


def _path(speed, cpu):
    return {"path": "x", "audio_s_per_s": speed, "cpu_per_audio_s": cpu, "wer": 1.0, "completed": 1, "of": 1}


def test_speed_ratios_divide_and_cost_ratios_invert():
    fast_cheap, slow_dear = _path(20.0, 0.01), _path(10.0, 0.04)
    assert ratio(fast_cheap, slow_dear, "audio_s_per_s") == 2.0
    assert ratio(fast_cheap, slow_dear, "cpu_per_audio_s") == 4.0  # a quarter of the CPU: 4x cheaper
    assert ratio(fast_cheap, _path(10.0, None), "cpu_per_audio_s") is None


def test_ratios_are_paired_per_round_then_the_median_with_the_range():
    rounds = [{"base": _path(b, 0.02), "in_process": _path(i, 0.01)} for b, i in ((8, 10), (9, 10), (5, 10))]
    r = ratios(rounds)
    assert r["brogue/in_process"] == {"median": 0.8, "min": 0.5, "max": 0.9, "rounds": [0.8, 0.9, 0.5]}
    assert r["brogue/in_process cpu"]["median"] == 0.5
    assert "brogue/nemo_pytorch" not in r  # not measured: no ratio
    assert "brogue/in_process" not in ratios(rounds, skip=("brogue/in_process",))
    assert ratio_text(r["brogue/in_process"]) == "0.8 (0.5–0.9)"


def test_summary_gives_each_path_its_median_and_range():
    rounds = [{"base": _path(s, c)} for s, c in ((8, 0.03), (9, 0.01), (5, 0.02))]
    base = summarise(rounds)["base"]
    assert base["audio_s_per_s"] == 8 and base["audio_s_per_s_range"] == [5, 9]
    assert base["cpu_per_audio_s"] == 0.02 and base["cpu_per_audio_s_range"] == [0.01, 0.03] and base["runs"] == 3
