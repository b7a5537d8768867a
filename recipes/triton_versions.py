"""Which Triton model-control moves keep live sequences: the measurement behind one Triton model per
exported model version (docs/models.md, "Why one Triton model per version").

A live sequence of the demo model is opened, then one move is made, then the sequence sends its next
chunk (a few seconds later, once any background reload has swapped in). Moves, each on a fresh
``tritonserver`` (the one nvidia-pytriton carries) in explicit model-control mode:

- ``add_version``: version 2 is added beside the live version 1 of the same model (folder ``2``
  written, ``load_model`` with version policy ``specific [1, 2]``);
- ``add_version_precreated``: the same, with folder ``2`` there since the server started, so only
  the version policy changes;
- ``remove_version``: with versions 1 and 2 loaded and a sequence live on 2, version 1 is dropped
  (``load_model`` with policy ``specific [2]``);
- ``load_other_model``: a second model (another name) is loaded beside the live one;
- ``unload_other_model``: that second model is unloaded while a sequence is live on the first;
- ``repeat_upload``: a model loaded through the API (config and ``1/model.py`` uploaded with the
  load, as Brogue loads model versions) is loaded again with the same config and files, as a second
  gateway would.

    .venv/bin/python recipes/triton_versions.py [--json docs/performance/triton-versions.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SETTLE_S = 6.0  # a background reload takes ~2-4 s here


def _model_folder(repo: Path, name: str, versions: list[int], policy: list[int]) -> Path:
    src = REPO / "model_repo" / "asr_streaming"
    folder = repo / name
    cfg = (src / "config.pbtxt").read_text().replace('name: "asr_streaming"', f'name: "{name}"')
    cfg += f"\nversion_policy: {{ specific {{ versions: {policy} }} }}\n"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(cfg)
    for v in versions:
        (folder / str(v)).mkdir(exist_ok=True)
        shutil.copy(src / "1" / "model.py", folder / str(v) / "model.py")
    return folder


def _policy(client, name: str, versions: list[int]) -> None:
    config = client.get_model_config(name, as_json=True)["config"]
    config["version_policy"] = {"specific": {"versions": versions}}
    client.load_model(name, config=json.dumps(config))


def _upload(client, repo: Path, name: str) -> None:
    from google.protobuf import json_format

    from brogue.server.triton_repository import read_config

    config = read_config(repo / "asr_a")
    config.name = name
    config.parameters["MODEL_DIR"].string_value = str(REPO / "model_repo" / "exported" / "demo")
    config.parameters["ADAPTER_STORE"].string_value = str(REPO / "model_repo" / "adapters")
    client.load_model(name, config=json_format.MessageToJson(config, preserving_proto_field_name=True),
                      files={"file:1/model.py": (repo / "asr_a" / "1" / "model.py").read_bytes()})


def run_move(move: str) -> dict:
    import tritonclient.grpc as gc

    from brogue.asr_io import request_inputs
    from brogue.server.tritonserver import TritonProcess

    audio = (np.random.default_rng(0).standard_normal(5120) * 0.05).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="brogue-versions-") as tmp:
        repo = Path(tmp)
        for part in ("exported", "adapters"):
            (repo / part).symlink_to(REPO / "model_repo" / part)
        pre = {"add_version": [1], "add_version_precreated": [1, 2], "remove_version": [1, 2],
               "load_other_model": [1], "unload_other_model": [1], "repeat_upload": [1]}[move]
        _model_folder(repo, "asr_a", pre, [1, 2] if move == "remove_version" else [1])
        models = ["asr_a"]
        if move == "unload_other_model":
            _model_folder(repo, "asr_b", [1], [1])
            models.append("asr_b")
        with TritonProcess(repo, models=tuple(models)).start(timeout=180) as server:
            client = gc.InferenceServerClient(server.grpc_url)
            live_version = "2" if move == "remove_version" else "1"
            live_model = "asr_a"
            if move == "repeat_upload":
                _upload(client, repo, "asr_u")
                live_model, live_version = "asr_u", ""

            def chunk(start=False, end=False) -> str:
                try:
                    client.infer(live_model, request_inputs(audio, start=start), model_version=live_version,
                                 sequence_id=11, sequence_start=start, sequence_end=end)
                    return "ok"
                except Exception as e:  # noqa: BLE001 - the outcome is what is measured
                    return str(e).split("] ", 1)[-1][:160]

            opened = chunk(start=True)
            t0 = time.monotonic()
            if move.startswith("add_version"):
                if move == "add_version":
                    _model_folder(repo, "asr_a", [2], [1])
                _policy(client, "asr_a", [1, 2])
            elif move == "remove_version":
                _policy(client, "asr_a", [2])
            elif move == "repeat_upload":
                _upload(client, repo, "asr_u")
            elif move == "load_other_model":
                _model_folder(repo, "asr_b", [1], [1])
                client.load_model("asr_b")
            else:
                client.unload_model("asr_b")
            took = time.monotonic() - t0
            time.sleep(SETTLE_S)
            after = chunk()
            log = [line.split("] ", 1)[-1] for line in server.log_tail(400).splitlines()
                   if "model_lifecycle" in line and ("loading:" in line or "unloaded" in line)
                   or "TRITONBACKEND_ModelInstanceInitialize" in line]
        return {"move": move, "opened": opened, "move_s": round(took, 2), "live_sequence_after": after,
                "kept": after == "ok", "lifecycle_log": log}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    moves = ["add_version", "add_version_precreated", "remove_version", "load_other_model", "unload_other_model",
             "repeat_upload"]
    results = []
    for move in moves:
        r = run_move(move)
        results.append(r)
        print(f"{move:24s} kept={r['kept']!s:5s} {r['live_sequence_after']}", flush=True)
    out = {"tritonserver": "2.51 (nvidia-pytriton 0.7.0)", "settle_s": SETTLE_S, "results": results}
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=1) + "\n")
    sys.exit(0)


if __name__ == "__main__":
    main()
