// AudioWorklet processor: collects the microphone's first channel into Float32 frames of
// `frameSamples` samples (set by the page, ~50 ms) and posts each one to the main thread,
// transferring its buffer. Message {type: "flush"} posts what is buffered, then {type: "flushed"}.
class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.frameSamples = Math.max(128, (options.processorOptions || {}).frameSamples | 0 || 2400);
    this.buf = new Float32Array(this.frameSamples);
    this.fill = 0;
    this.capturing = true;
    this.port.onmessage = (e) => {
      if (e.data && e.data.type === "flush") {
        this.capturing = false;
        this.post();
        this.port.postMessage({ type: "flushed" });
      }
    };
  }

  post() {
    if (this.fill === 0) return;
    const frame = this.buf.slice(0, this.fill);
    this.port.postMessage({ type: "audio", frame }, [frame.buffer]);
    this.fill = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!this.capturing) return false;
    if (channel) {
      let i = 0;
      while (i < channel.length) {
        const n = Math.min(channel.length - i, this.frameSamples - this.fill);
        this.buf.set(channel.subarray(i, i + n), this.fill);
        this.fill += n;
        i += n;
        if (this.fill === this.frameSamples) this.post();
      }
    }
    return true; // keep running; outputs stay silent
  }
}

registerProcessor("brogue-capture", CaptureProcessor);
