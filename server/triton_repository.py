"""A model repository for Triton that changes some models' config parameters, without touching the original.

``brogue serve --model-dir DIR --latencies ...`` must make Triton serve ``DIR`` at those latencies,
while the repository on disk says ``exported/demo`` and every latency. :func:`overlay_repository`
builds, in a run folder, a repository of symlinks to every entry of the original one, except that
each overridden model folder holds a rewritten ``config.pbtxt`` (parsed and printed with Triton's
own ``ModelConfig`` message) beside symlinks to its version folders. Relative paths in the
parameters (``exported/demo``, ``adapters``) resolve in the overlay as they do in the original, and
the adapter store stays one folder that the gateway's admin API and Triton both see.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def read_config(model_folder: str | Path, config_name: str = ""):
    """The ``ModelConfig`` of ``model_folder/config.pbtxt``, or of ``configs/NAME.pbtxt`` for a
    ``config_name`` (what ``tritonserver --model-config-name=NAME`` loads)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    folder = Path(model_folder)
    path = folder / "configs" / f"{config_name}.pbtxt" if config_name else folder / "config.pbtxt"
    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such model config") from None
    except text_format.ParseError as e:
        raise ValueError(f"{path}: not a valid model config: {e}") from None


def overlay_repository(source: str | Path, dest: str | Path,
                       parameters: Mapping[str, Mapping[str, str]]) -> Path:
    """Build ``dest``: ``source`` with the config parameters of each model in ``parameters``
    (``{model: {KEY: value}}``) set. Returns ``dest``. A model of ``parameters`` that ``source`` does
    not hold is not an error here: Triton, asked to load it, fails with its own message."""
    source, dest = Path(source).resolve(), Path(dest)
    from google.protobuf import text_format

    dest.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir()):
        target = dest / entry.name
        # a model the repository lacks is left for Triton to report (its load fails, with the reason)
        if entry.name not in parameters or not (entry / "config.pbtxt").is_file():
            target.symlink_to(entry)
            continue
        config = read_config(entry)
        for key, value in parameters[entry.name].items():
            config.parameters[key].string_value = str(value)
        target.mkdir()
        for part in entry.iterdir():
            if part.name != "config.pbtxt":
                (target / part.name).symlink_to(part)
        (target / "config.pbtxt").write_text(text_format.MessageToString(config))
    return dest
