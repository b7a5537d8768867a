"""Model versions of the model store as Triton models: one Triton model per version, loaded and
unloaded through Triton's model-control API.

Why not Triton's versions of one model: adding or removing a version with ``load_model`` (a changed
version policy, or a new version folder) reloads every version kept, and a reload drops every live
sequence of the version (measured with ``recipes/triton_versions.py``;
docs/performance/triton-versions.json). Loading or unloading a *separate* model leaves the others
alone. So ``NAME@VERSION`` is served as the Triton model ``asr_streaming@NAME@VERSION``, and a
rollout is: load the new model beside the old, send new streams there, unload the old once drained.

The model is uploaded with the load call (``config`` plus ``1/model.py``): the config is the
repository's ``asr_streaming/config.pbtxt`` with the serving parameters of this deployment, its
name, and absolute paths to the entry and the adapter store as Triton sees them
(``triton_repository``). Triton needs no write access to the repository, and the same call works on
a remote instance that mounts the repository elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from google.protobuf import json_format

from brogue.models import ModelRef

from .triton_repository import read_config

BASE_MODEL = "asr_streaming"


def triton_name(ref: ModelRef | None) -> str:
    """The Triton model serving ``ref`` (None: the deployment's base model, ``asr_streaming``)."""
    return BASE_MODEL if ref is None else f"{BASE_MODEL}@{ref.name}@{ref.version}"


class VersionModels:
    """How to load a store version into a Triton instance: its config and files.

    ``model_repository``: where the gateway reads the repository (the template model
    ``asr_streaming`` and the model store ``models/``); ``triton_repository``: the same folder as
    the Triton instances see it (default: the same path); ``parameters``: config parameters that
    this deployment serves every model with (``LATENCIES``, for instance); ``config_name``: the
    template's config as Triton loads it (``--model-config-name``, e.g. ``gpu``: the GPU settings of
    ``asr_streaming/configs/gpu.pbtxt``; "" for ``config.pbtxt``).
    """

    def __init__(self, model_repository: str | Path, *, triton_repository: str | Path | None = None,
                 parameters: Mapping[str, str] | None = None, config_name: str = ""):
        self.model_repository = Path(model_repository).resolve()
        self.triton_repository = Path(triton_repository) if triton_repository else self.model_repository
        self.template = self.model_repository / BASE_MODEL
        self.parameters = dict(parameters or {})
        self.config_name = config_name

    def settings(self) -> dict[str, str]:
        """The serving parameters every version gets (the template's, with this deployment's)."""
        config = read_config(self.template, self.config_name)
        out = {k: v.string_value for k, v in config.parameters.items()}
        out.update(self.parameters)
        return out

    def config_json(self, ref: ModelRef) -> str:
        config = read_config(self.template, self.config_name)
        config.name = triton_name(ref)
        for key, value in self.parameters.items():
            config.parameters[key].string_value = str(value)
        config.parameters["MODEL_DIR"].string_value = str(self.triton_repository / "models" / ref.name / ref.version)
        store = config.parameters["ADAPTER_STORE"].string_value or "adapters"
        config.parameters["ADAPTER_STORE"].string_value = str(self.triton_repository / store)
        return json_format.MessageToJson(config, preserving_proto_field_name=True)

    def files(self) -> dict[str, bytes]:
        """The version folder Triton gets with the load: the thin ``model.py`` of the template."""
        return {"file:1/model.py": (self.template / "1" / "model.py").read_bytes()}

    async def load(self, client, ref: ModelRef, timeout: float | None = None) -> None:
        """Load ``ref`` on the instance of ``client`` (tritonclient aio); raises what Triton says."""
        await client.load_model(triton_name(ref), config=self.config_json(ref), files=self.files(),
                                client_timeout=timeout)

    async def unload(self, client, ref: ModelRef, timeout: float | None = None) -> None:
        await client.unload_model(triton_name(ref), client_timeout=timeout)
