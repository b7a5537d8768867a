"""Where the serving CPU goes: py-spy samples of the gateway and the Triton model under live load.

``python -m bench.profile --streams 32 --seconds 30 --out DIR`` starts the bench's stack
(:class:`~bench.stack.Stack`: a tritonserver and a gateway on loopback), warms it up, then keeps
``streams`` live callers on the line (:func:`~bench.load.run_level`) while ``py-spy record`` samples
the gateway process and the Triton Python-backend stub that runs ``asr_streaming`` (native frames
included, idle threads excluded). It writes, per process:

- ``NAME.folded``: py-spy's collapsed stacks (``flamegraph.pl NAME.folded`` draws the graph);
- ``NAME.top.md``: the top functions by own time and by inclusive time, as shares of all samples;

and ``profile.json`` with the level's numbers and the CPU seconds per audio second of the gateway,
the stub and tritonserver itself (each process alone). py-spy must be able to attach (ptrace), as it can in
these containers.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil


def _stub_pid(triton_pid: int) -> int:
    """The Python-backend stub of ``asr_streaming`` under ``triton_pid``."""
    for p in psutil.Process(triton_pid).children(recursive=True):
        try:
            if "stub" in p.name() and any("asr_streaming" in a for a in p.cmdline()):
                return p.pid
        except psutil.Error:
            continue
    raise RuntimeError(f"no asr_streaming Python-backend stub under tritonserver pid {triton_pid}")


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` itself."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def _frame_name(frame: str) -> str:
    """``func (file.py:123)`` -> ``func (file.py)``: a function, not a line, is the unit."""
    if frame.endswith(")") and " (" in frame:
        name, where = frame[:-1].rsplit(" (", 1)
        return f"{name} ({where.rsplit(':', 1)[0]})"
    return frame


# A thread whose stack holds one of these is waiting (for I/O, a lock, the GIL, a condition), not
# spending CPU: native sampling sees such threads, so they are counted apart.
WAITS = ("epoll_wait", "poll (", "select (", "pthread_cond_wait", "pthread_cond_timedwait", "sem_wait",
         "sem_timedwait", "sem_clockwait", "nanosleep", "PyThread_acquire_lock_timed", "futex_wait", "take_gil")


def top_functions(folded: str, n: int = 25) -> dict:
    """Own and inclusive shares (% of the busy samples) per function from collapsed stacks (``a;b;c
    COUNT`` lines); stacks that wait (:data:`WAITS`) count as ``waiting``, not as busy."""
    own: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = waiting = 0
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        if any(w in stack for w in WAITS):
            waiting += c
            continue
        frames = [_frame_name(f) for f in stack.split(";")]
        total += c
        own[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
    share = lambda k: round(100 * k / total, 1) if total else 0.0  # noqa: E731
    return {"samples": total, "waiting_samples": waiting,
            "own": [(f, share(k)) for f, k in own.most_common(n)],
            "inclusive": [(f, share(k)) for f, k in incl.most_common(n)]}


def top_markdown(name: str, top: dict) -> str:
    lines = [f"# {name}: {top['samples']} busy samples ({top['waiting_samples']} waiting, not counted)", "",
             "| own % | function |", "|---:|---|"]
    lines += [f"| {s} | `{f}` |" for f, s in top["own"]]
    lines += ["", "| inclusive % | function |", "|---:|---|"]
    lines += [f"| {s} | `{f}` |" for f, s in top["inclusive"]]
    return "\n".join(lines) + "\n"


def _record(pid: int, seconds: float, out: Path, rate: int) -> subprocess.Popen:
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy; it is in the bench extra)")
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
                             "--format", "raw", "--native", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def profile(repo: Path, clips_manifest: Path, out_dir: Path, *, model: str = "demo", decoder: str = "auto",
            threads: int | None = None, queue_delay_us: int | None = None, streams: int = 32,
            seconds: float = 30.0, rate: int = 100, log=print) -> dict:
    from .load import run_level
    from .run import load_clips, machine
    from .stack import Stack

    clips = load_clips(clips_manifest)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="brogue-profile-") as tmp, Stack(repo, Path(tmp), model=model,
                                                                                 decoder=decoder, threads=threads,
                                                                                 queue_delay_us=queue_delay_us) as stack:
        run_level(stack, 1, clips, seconds=5)  # warm up
        pids = {"gateway": stack.gateway.pid, "triton_model": _stub_pid(stack.triton.pid)}
        own = {**pids, "tritonserver": stack.triton.pid}  # CPU of each process alone, children apart
        cpu0 = {n: _cpu(p) for n, p in own.items()}
        level: dict = {}
        runner = threading.Thread(target=lambda: level.update(run_level(stack, streams, clips, seconds=seconds + 4)))
        runner.start()
        time.sleep(2)  # callers ramp up within the level's spread
        spies = {name: _record(pid, seconds, out_dir / f"{name}.folded", rate) for name, pid in pids.items()}
        for name, p in spies.items():
            _, err = p.communicate(timeout=seconds + 120)
            if p.returncode != 0:
                raise RuntimeError(f"py-spy on {name} failed: {err.decode()[-500:]}")
        runner.join()
        cpu = {n: round(_cpu(p) - cpu0[n], 2) for n, p in own.items()}
    audio = level["audio_s_per_s"] * level["seconds"]
    result = {"machine": machine(), "model": model, "decoder": decoder, "threads": threads,
              "queue_delay_us": queue_delay_us, "streams": streams, "seconds": seconds, "rate_hz": rate,
              "level": {k: level.get(k) for k in ("streams_run", "errors", "final_latency", "audio_s_per_s", "rtf_cpu",
                                                  "processes")},
              "cpu_s": cpu, "audio_s": round(audio, 1),
              "cpu_per_audio_s": {n: round(c / audio, 4) for n, c in cpu.items()}, "top": {}}
    for name in pids:
        top = top_functions((out_dir / f"{name}.folded").read_text())
        (out_dir / f"{name}.top.md").write_text(top_markdown(name, top))
        result["top"][name] = top
        log(f"{name}: {top['samples']} samples; own time: " +
            ", ".join(f"{s}% {f}" for f, s in top["own"][:8]))
    log("CPU s per audio s (py-spy's pauses included): " +
        ", ".join(f"{n} {v}" for n, v in result["cpu_per_audio_s"].items()))
    (out_dir / "profile.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-repository", type=Path, default=Path(__file__).resolve().parents[1] / "model_repo")
    ap.add_argument("--model", default="demo")
    ap.add_argument("--clips", type=Path, default=Path(__file__).resolve().parents[1] / "tests/data/demo/manifest.json")
    ap.add_argument("--decoder", default="auto", choices=("auto", "greedy", "lm"))
    ap.add_argument("--threads", type=int, help="asr_streaming's INTRA_OP_THREADS (default: the repository's)")
    ap.add_argument("--queue-delay-us", type=int, help="the sequence batcher's max_queue_delay_microseconds")
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rate", type=int, default=100, help="samples per second")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    profile(a.model_repository, a.clips, a.out, model=a.model, decoder=a.decoder, threads=a.threads,
            queue_delay_us=a.queue_delay_us, streams=a.streams, seconds=a.seconds, rate=a.rate)


if __name__ == "__main__":
    main()
