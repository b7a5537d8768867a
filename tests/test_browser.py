"""The browser page (clients/web) end to end: Debian's chromium driven by Playwright against a real
gateway and tritonserver, with chromium's fake microphone playing a generated WAV file.

Chromium loops the fake file and captures it at the AudioContext's rate, so the live-microphone test
checks what the page shows (partials, then finals, from this tenant's stream); exact transcript
parity is checked by feeding a known buffer through the page's own WebSocket code path
(``window.brogueSendBuffer``) and comparing with the reference runner on the gateway's resampling.

Chromium is required: these tests fail (never skip) when it is missing (`apt-get install chromium`).
"""

from __future__ import annotations

import base64
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO_KEYS, reference_text

from brogue.audio.codecs import AudioDecoder

pytestmark = pytest.mark.nemo

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT_COPY = Path("/tmp/brogue-browser.png")
TENANT = "scot"  # a tenant with an adapter: its transcript differs from the base model's


def speech_with_pauses(rng, rate: int, pattern=((0.9, 0.5), (1.3, 0.9), (0.7, 0.8))) -> np.ndarray:
    """Noise bursts with a syllable-like envelope, separated by silent pauses (seconds)."""
    parts = []
    for talk, pause in pattern:
        n = int(talk * rate)
        step = rate // 10
        env = np.repeat(rng.uniform(0.05, 0.35, size=n // step + 1), step)[:n]
        parts += [rng.standard_normal(n) * env, np.zeros(int(pause * rate))]
    return np.clip(np.concatenate(parts), -1, 1).astype(np.float32)


def write_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((audio * 32767).astype("<i2").tobytes())




def squash(text: str) -> str:
    return text.replace(" ", "")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    wav = tmp_path_factory.mktemp("browser") / "mic.wav"
    write_wav(wav, speech_with_pauses(np.random.default_rng(21), 48000), 48000)
    args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}"]
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        yield b
        b.close()


@pytest.fixture
def page(browser, gateway):
    context = browser.new_context(viewport={"width": 900, "height": 800})
    context.grant_permissions(["microphone"], origin=f"http://127.0.0.1:{gateway.http_port}")
    pg = context.new_page()
    pg.console_lines = []
    pg.on("console", lambda m: pg.console_lines.append(f"{m.type}: {m.text}"))
    pg.on("pageerror", lambda e: pg.console_lines.append(f"pageerror: {e}"))
    pg.goto(f"http://127.0.0.1:{gateway.http_port}/")
    yield pg
    context.close()


def page_finals(pg) -> list[str]:
    return pg.eval_on_selector_all("#finals li .transcript", "els => els.map(e => e.textContent)")


def shoot(pg, path: Path, copy: bool = False) -> None:
    pg.screenshot(path=str(path), full_page=True)
    print(f"\nscreenshot: {path}")
    if copy:
        shutil.copyfile(path, SCREENSHOT_COPY)
        print(f"screenshot copy: {SCREENSHOT_COPY}")


def test_microphone_stream_shows_partials_then_finals(page, gateway, demo_repo, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    pg = page
    pg.fill("#api-key", DEMO_KEYS[TENANT])
    pg.click("#start")
    diag = lambda: f"console: {pg.console_lines}\nerror: {pg.text_content('#error')!r}\n{gateway.log()[-2000:]}"
    try:
        pg.wait_for_function("window.brogueLog.some(m => m.type === 'partial')", timeout=60_000)
        pg.click("#end-utterance")  # a forced endpoint mid-stream: a final while the mic is still live
        pg.wait_for_selector("#finals li", timeout=30_000)
        pg.wait_for_timeout(1500)
        pg.click("#stop")
        pg.wait_for_function("document.getElementById('status').dataset.state === 'idle'", timeout=60_000)
    except PlaywrightTimeout as e:
        shoot(pg, tmp_path / "browser-failed.png")
        raise AssertionError(f"the page did not stream\n{diag()}") from e
    shoot(pg, tmp_path / "browser.png", copy=True)

    log = pg.evaluate("window.brogueLog")
    kinds = [m["type"] for m in log]
    assert kinds[0] == "ready" and kinds[-1] == "end", kinds
    ready = log[0]
    assert ready["tenant"] == TENANT and ready["adapter"] == demo_repo.refs[TENANT], ready
    assert "partial" in kinds and kinds.index("partial") < kinds.index("final"), kinds
    assert f"tenant {TENANT}" in pg.text_content("#session")
    rate = int(pg.get_attribute("#rate", "data-rate"))
    assert rate in (44100, 48000, 16000, 22050, 8000) and str(rate) in pg.text_content("#rate")

    shown = page_finals(pg)
    sent = [m for m in log if m["type"] == "final" and m["transcript"].strip()]
    assert len(sent) >= 1 and all(s.strip() for s in shown), (shown, sent)
    assert [squash(s) for s in shown] == [squash(m["transcript"]) for m in sent]
    assert not pg.is_visible("#error"), pg.text_content("#error")
    # per-word confidence is rendered: one span per word, opacity from the confidence
    words = pg.eval_on_selector_all("#finals .word", "els => els.map(e => [e.textContent, +e.dataset.confidence])")
    want = [[w["word"], round(w["confidence"], 3)] for m in sent for w in m["words"]]
    assert words and [[w, round(c, 3)] for w, c in words] == want


def test_page_code_path_gives_the_reference_transcript(page, gateway, demo_repo, tmp_path):
    rng = np.random.default_rng(22)
    for rate in (48000, 44100):
        audio = speech_with_pauses(rng, rate, pattern=((1.0, 0.4), (1.2, 0.6)))
        result = page.evaluate(
            "async ([b64, rate, key]) => {"
            "  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));"
            "  return await window.brogueSendBuffer(new Float32Array(bytes.buffer), rate, {key});"
            "}",
            [base64.b64encode(audio.astype("<f4").tobytes()).decode(), rate, DEMO_KEYS[TENANT]])
        msgs = result["messages"]
        kinds = [m["type"] for m in msgs]
        assert kinds[0] == "ready" and kinds[-1] == "end" and result["close"]["error"] is None, (kinds, result["close"])
        assert msgs[0]["tenant"] == TENANT

        dec = AudioDecoder("float32", rate)
        as_model = np.concatenate([dec.feed(audio.astype("<f4").tobytes()), dec.flush()])
        want = reference_text(demo_repo, as_model, TENANT)
        got = "".join(m["transcript"] for m in msgs if m["type"] == "final")
        assert want and squash(got) == squash(want), (rate, got, want)
        assert squash("".join(page_finals(page))) == squash(want)
    shoot(page, tmp_path / "browser-buffer.png")


def test_wrong_key_shows_the_gateway_error(page, tmp_path):
    page.fill("#api-key", "not-a-key")
    page.click("#start")
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    text = page.text_content("#error")
    shoot(page, tmp_path / "browser-wrong-key.png")
    assert "invalid API key" in text and "401" in text, text
    assert page.get_attribute("#status", "data-state") == "error"
    assert not page.is_disabled("#start") and page.is_disabled("#stop")


def test_server_error_message_is_shown_verbatim(page):
    # An unsupported rate is refused by the gateway with an "error" message: the page shows it as sent.
    err = page.evaluate("async (key) => { try { await window.brogueSendBuffer(new Float32Array(160), 11025, {key});"
                        " return null } catch (e) { return e.message } }", DEMO_KEYS["base"])
    log = page.evaluate("window.brogueLog")
    sent = [m for m in log if m["type"] == "error"][-1]
    assert err == f"{sent['code']}: {sent['message']}" and "sample_rate" in sent["message"]
    page.wait_for_selector("#error:not([hidden])")
    assert page.text_content("#error") == err
