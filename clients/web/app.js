// Brogue browser client: microphone -> AudioWorklet -> WebSocket /v1/stream (float32 at the
// AudioContext's own rate; the gateway resamples), live partials and finals with word confidences.
// Protocol: docs/websocket.md. No dependencies, no build step.

export const SUPPORTED_RATES = [8000, 16000, 22050, 44100, 48000];
export const FRAME_MS = 50; // audio frame length sent to the gateway

const $ = (id) => document.getElementById(id);
const ui = {
  key: $("api-key"), start: $("start"), stop: $("stop"), endUtterance: $("end-utterance"), status: $("status"), rate: $("rate"),
  session: $("session"), error: $("error"), partial: $("partial"), finals: $("finals"),
};

// Every server message, in order of arrival (also read by the browser test).
export const messageLog = [];
window.brogueLog = messageLog;

// -- the WebSocket client (shared by the microphone path and brogueSendBuffer) --------------------

export function streamUrl(key) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/v1/stream?api_key=${encodeURIComponent(key)}`;
}

// Why a handshake failed: the gateway answers a refused key with HTTP 401 and a text body, which a
// browser WebSocket cannot read; ask again over plain HTTP and return that text (or null).
async function handshakeRefusal(key) {
  try {
    const r = await fetch(`/v1/stream?api_key=${encodeURIComponent(key)}`, { cache: "no-store" });
    if (r.status === 401 || r.status === 403) return `HTTP ${r.status}: ${(await r.text()).trim()}`;
  } catch (e) {
    return `cannot reach the gateway at ${location.host}`;
  }
  return null;
}

export class StreamClient {
  // handlers: onMessage(msg) for every server message; onClose({code, reason, error}) once.
  constructor(key, handlers) {
    this.key = key;
    this.handlers = handlers;
    this.ws = null;
    this.opened = false;
    this.serverError = null;
    this.closed = new Promise((resolve) => (this._resolveClosed = resolve));
  }

  // Connects, sends the config, resolves with the "ready" message (rejects with an Error).
  connect(config) {
    return new Promise((resolve, reject) => {
      let ready = false;
      const ws = (this.ws = new WebSocket(streamUrl(this.key)));
      ws.binaryType = "arraybuffer";
      ws.onopen = () => {
        this.opened = true;
        ws.send(JSON.stringify({ type: "config", ...config }));
      };
      ws.onmessage = (ev) => {
        if (typeof ev.data !== "string") return;
        const msg = JSON.parse(ev.data);
        messageLog.push({ ...msg, _t: performance.now() });
        if (msg.type === "error") this.serverError = `${msg.code}: ${msg.message}`;
        this.handlers.onMessage(msg);
        if (msg.type === "ready" && !ready) {
          ready = true;
          resolve(msg);
        } else if (msg.type === "error" && !ready) {
          ready = true;
          reject(new Error(this.serverError));
        }
      };
      ws.onerror = () => {}; // the close event that follows says more
      ws.onclose = async (ev) => {
        let error = this.serverError || null; // the gateway's own words, verbatim
        if (error) {
          // already said by the "error" message
        } else if (!this.opened) error = (await handshakeRefusal(this.key)) || `connection refused (close ${ev.code})`;
        else if (ev.code !== 1000 && ev.code !== 1005) error = `connection closed: ${ev.code}${ev.reason ? " " + ev.reason : ""}`;
        if (!ready) {
          ready = true;
          reject(new Error(error || "connection closed before the gateway was ready"));
        }
        this.handlers.onClose({ code: ev.code, reason: ev.reason, error });
        this._resolveClosed(ev);
      };
    });
  }

  sendAudio(frame) {
    // Float32Array -> binary float32 little-endian (the byte order of every browser platform).
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(frame);
  }

  flush() {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: "flush" }));
  }

  // End of audio: the gateway sends the last finals, {"type": "end"}, and closes.
  finish() {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: "close" }));
  }

  abort() {
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, "client stopped");
  }
}

// -- rendering ----------------------------------------------------------------------------------

function setStatus(text, state) {
  ui.status.textContent = text;
  ui.status.dataset.state = state;
}

function showError(text) {
  ui.error.textContent = text;
  ui.error.hidden = !text;
}

function fmt(t) {
  return typeof t === "number" ? t.toFixed(2) : "?";
}

function renderWords(container, msg) {
  container.textContent = "";
  if (!msg.words || msg.words.length === 0) {
    container.textContent = msg.transcript;
    return;
  }
  msg.words.forEach((w, i) => {
    if (i) container.append(" ");
    const span = document.createElement("span");
    span.className = "word";
    span.textContent = w.word;
    const c = Math.max(0, Math.min(1, Number(w.confidence) || 0));
    span.style.opacity = (0.3 + 0.7 * c).toFixed(2);
    if (c < 0.5) span.classList.add("low");
    span.title = `${w.word}: ${fmt(w.start)}-${fmt(w.end)} s, confidence ${c.toFixed(2)}`;
    span.dataset.confidence = c.toFixed(3);
    container.append(span);
  });
}

function addFinal(msg) {
  const li = document.createElement("li");
  li.className = "final";
  li.dataset.utteranceId = msg.utterance_id;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = `#${msg.utterance_id} ${fmt(msg.start)}-${fmt(msg.end)} s`;
  const text = document.createElement("span");
  text.className = "transcript";
  renderWords(text, msg);
  li.append(meta, text);
  ui.finals.append(li);
  li.scrollIntoView({ block: "nearest" });
}

function onServerMessage(msg) {
  switch (msg.type) {
    case "ready":
      ui.session.textContent =
        `tenant ${msg.tenant} · adapter ${msg.adapter || "none (base model)"} · model ${msg.model || "?"}` +
        ` · ${msg.sample_rate} Hz, ${msg.chunk_ms} ms chunks`;
      ui.session.dataset.tenant = msg.tenant;
      setStatus("Streaming", "streaming");
      break;
    case "partial":
      ui.partial.textContent = msg.transcript;
      ui.partial.classList.toggle("stable", !!msg.stable);
      break;
    case "final":
      ui.partial.textContent = "";
      if (msg.transcript.trim()) addFinal(msg);
      break;
    case "error":
      showError(`${msg.code}: ${msg.message}`);
      break;
    case "end":
      ui.partial.textContent = "";
      break;
  }
}

// -- the microphone path --------------------------------------------------------------------------

let live = null; // {client, ctx, media, node}

async function start() {
  const key = ui.key.value.trim();
  showError("");
  if (!key) {
    showError("Enter a tenant API key.");
    return;
  }
  ui.start.disabled = true;
  ui.finals.textContent = "";
  ui.partial.textContent = "";
  setStatus("Opening the microphone…", "connecting");
  const session = { client: null, ctx: null, media: null, node: null, stopping: false };
  live = session;
  try {
    // The AudioContext runs at the device's rate; the gateway resamples the supported ones.
    let ctx = new AudioContext();
    if (!SUPPORTED_RATES.includes(ctx.sampleRate)) {
      await ctx.close();
      ctx = new AudioContext({ sampleRate: 48000 });
    }
    session.ctx = ctx;
    session.media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    await ctx.audioWorklet.addModule("/static/capture-worklet.js");
    await ctx.resume();
    ui.rate.textContent = `${ctx.sampleRate} Hz float32`;
    ui.rate.dataset.rate = ctx.sampleRate;

    setStatus("Connecting…", "connecting");
    session.client = new StreamClient(key, {
      onMessage: onServerMessage,
      onClose: ({ error }) => {
        if (error) showError(error);
        teardownAudio(session);
        if (live === session) live = null;
        const n = ui.finals.children.length;
        setStatus(error ? "Disconnected" : `Stopped · ${n} final${n === 1 ? "" : "s"}`, error ? "error" : "idle");
        ui.start.disabled = false;
        ui.stop.disabled = ui.endUtterance.disabled = true;
      },
    });
    const ready = await session.client.connect({ sample_rate: ctx.sampleRate, encoding: "float32", interim_results: true });
    ui.rate.textContent = `${ctx.sampleRate} Hz float32 → ${ready.sample_rate} Hz`;

    const frameSamples = Math.round((ctx.sampleRate * FRAME_MS) / 1000);
    const node = new AudioWorkletNode(ctx, "brogue-capture", {
      numberOfInputs: 1, numberOfOutputs: 1, channelCount: 1, channelCountMode: "explicit",
      processorOptions: { frameSamples },
    });
    node.port.onmessage = (e) => {
      if (e.data.type === "audio") session.client.sendAudio(e.data.frame);
      else if (e.data.type === "flushed" && session.onFlushed) session.onFlushed();
    };
    session.node = node;
    ctx.createMediaStreamSource(session.media).connect(node);
    node.connect(ctx.destination); // pulls the graph; the processor writes silence
    ui.stop.disabled = ui.endUtterance.disabled = false;
  } catch (e) {
    showError(e.message || String(e));
    if (session.client) session.client.abort();
    teardownAudio(session);
    if (live === session) live = null;
    setStatus("Error", "error");
    ui.start.disabled = false;
    ui.stop.disabled = ui.endUtterance.disabled = true;
  }
}

function teardownAudio(session) {
  if (session.media) session.media.getTracks().forEach((t) => t.stop());
  if (session.node) session.node.disconnect();
  if (session.ctx && session.ctx.state !== "closed") session.ctx.close();
  session.media = session.node = null;
}

async function stop() {
  const session = live;
  if (!session || session.stopping) return;
  session.stopping = true;
  ui.stop.disabled = ui.endUtterance.disabled = true;
  setStatus("Finishing…", "finishing");
  if (session.node) {
    // Send what the worklet still holds, then end the stream.
    await Promise.race([
      new Promise((resolve) => {
        session.onFlushed = resolve;
        session.node.port.postMessage({ type: "flush" });
      }),
      new Promise((resolve) => setTimeout(resolve, 500)),
    ]);
  }
  teardownAudio(session);
  session.client.finish();
  const timeout = new Promise((resolve) => setTimeout(() => resolve("timeout"), 30000));
  if ((await Promise.race([session.client.closed, timeout])) === "timeout") session.client.abort();
}

ui.start.addEventListener("click", start);
ui.stop.addEventListener("click", stop);
ui.endUtterance.addEventListener("click", () => live && live.client && live.client.flush());
ui.key.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !ui.start.disabled) start();
});

// -- the same stream code path, fed from a buffer (for tests and debugging) -----------------------

// Streams `samples` (Float32Array at `sampleRate`) through StreamClient exactly as the microphone
// path does: config {float32, sampleRate}, FRAME_MS binary frames, then {"type": "close"}. Results
// show on the page; resolves with every server message of the stream once the gateway closes it.
window.brogueSendBuffer = async function (samples, sampleRate, { key = ui.key.value.trim(), maxMessagesPerSecond = 100 } = {}) {
  if (live) throw new Error("a microphone stream is running");
  const data = samples instanceof Float32Array ? samples : Float32Array.from(samples);
  const messages = [];
  showError("");
  ui.finals.textContent = "";
  ui.partial.textContent = "";
  let closeInfo = null;
  const client = new StreamClient(key, {
    onMessage: (msg) => {
      messages.push(msg);
      onServerMessage(msg);
    },
    onClose: (info) => {
      closeInfo = info;
      if (info.error) showError(info.error);
      setStatus(info.error ? "Disconnected" : "Stopped", info.error ? "error" : "idle");
    },
  });
  setStatus("Connecting…", "connecting");
  await client.connect({ sample_rate: sampleRate, encoding: "float32", interim_results: true });
  ui.rate.textContent = `${sampleRate} Hz float32 (buffer)`;
  const frameSamples = Math.round((sampleRate * FRAME_MS) / 1000);
  for (let pos = 0; pos < data.length; pos += frameSamples) {
    client.sendAudio(data.slice(pos, pos + frameSamples));
    await new Promise((r) => setTimeout(r, 1000 / maxMessagesPerSecond));
  }
  client.finish();
  await client.closed;
  return { messages, close: closeInfo };
};

setStatus("Idle", "idle");
