"""The Kubernetes deployment under deploy/ (docs/deploy-gpu.md): schema-valid, and wired right.

No cluster and no kubectl here. Each kustomization is rendered in Python (:func:`render`), which
knows the three kustomize fields the deployment uses (``resources``, ``namespace``, ``images``) and
refuses any other, so what it renders is what ``kubectl apply -k`` applies. Every object is then
validated against the Kubernetes 1.30 schemas that ``kubernetes-validate`` bundles (strict: an
unknown field is an error). The Prometheus Operator's ServiceMonitor is a CRD, not in those schemas:
it is validated against :data:`SERVICE_MONITOR_SCHEMA`, written here from the fields the CRD
documents that these manifests use (a subset: anything else is refused).

The rest reads the YAML for the wiring that matters: one ``--triton-url`` per Triton instance, the
command Brogue runs Triton with, probes on endpoints the servers answer, the HPA's metric, the
tenants file, secrets and graceful shutdown. Options are parsed by the real ``brogue serve`` parser.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

import jsonschema
import kubernetes_validate
import pytest
import typer
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S_VERSION = "1.30"
KUSTOMIZATIONS = ("", "fill", "monitoring")  # folders under deploy/
NOT_MANIFESTS = {"monitoring/prometheus-adapter-values.yaml"}  # Helm values, not Kubernetes objects
KUSTOMIZE_FIELDS = {"apiVersion", "kind", "namespace", "resources", "images"}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding"}
POD_OWNERS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}

SERVICE_MONITOR_SCHEMA = {  # monitoring.coreos.com/v1 ServiceMonitor, the documented fields used here
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "spec": {"type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
                 "properties": {
            "jobLabel": {"type": "string"},
            "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
            "selector": {"type": "object", "additionalProperties": False, "properties": {
                "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                "matchExpressions": {"type": "array"}}},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "properties": {
                    "port": {"type": "string"}, "targetPort": {"type": ["string", "integer"]},
                    "path": {"type": "string", "pattern": "^/"},
                    "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                    "interval": {"type": "string",
                                 "pattern": r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                    "scrapeTimeout": {"type": "string"}, "honorLabels": {"type": "boolean"},
                    "tlsConfig": {"type": "object", "additionalProperties": False, "properties": {
                        "insecureSkipVerify": {"type": "boolean"}, "serverName": {"type": "string"},
                        "ca": {"type": "object"}, "cert": {"type": "object"}, "keySecret": {"type": "object"}}},
                    "relabelings": {"type": "array"}, "metricRelabelings": {"type": "array"}}}}}}},
}


# -- rendering ---------------------------------------------------------------------------------------

def render(folder: Path) -> list[tuple[str, dict]]:
    """``kubectl kustomize folder``: (source file, object) pairs. Raises for a listed file that is
    missing, a field this renderer does not implement, or two objects with the same kind and name."""
    kust = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kust) - KUSTOMIZE_FIELDS
    if unknown:
        raise ValueError(f"{folder}/kustomization.yaml: fields this test cannot render: {sorted(unknown)}")
    if (kust.get("apiVersion"), kust.get("kind")) != ("kustomize.config.k8s.io/v1beta1", "Kustomization"):
        raise ValueError(f"{folder}/kustomization.yaml: not a Kustomization")
    out, seen = [], set()
    for entry in kust.get("resources") or []:
        path = folder / entry
        if path.is_dir():
            out += render(path)
            continue
        if not path.is_file():
            raise FileNotFoundError(f"{folder}/kustomization.yaml lists {entry}, which does not exist")
        out += [(str(path.relative_to(DEPLOY)), doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    for _, obj in out:
        key = (obj["kind"], obj["metadata"]["name"])
        if key in seen:
            raise ValueError(f"{folder}: {key} is defined twice")
        seen.add(key)
        if "namespace" in kust and obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = kust["namespace"]
        for image in kust.get("images") or []:  # kustomize's image transformer: name, newName, newTag
            for container in _containers(obj, init=True):
                name, tag = container["image"], ""
                if ":" in name.rpartition("/")[2]:  # a tag, not a registry's port
                    name, _, tag = name.rpartition(":")
                if name == image["name"]:
                    tag = image.get("newTag", tag)
                    container["image"] = image.get("newName", name) + (f":{tag}" if tag else "")
    return out


def _pod(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"] if obj["kind"] in POD_OWNERS else {}


def _containers(obj: dict, init: bool = False) -> list[dict]:
    pod = _pod(obj)
    return [*pod.get("containers", []), *(pod.get("initContainers", []) if init else [])]


@pytest.fixture(scope="module")
def deployment() -> dict:
    """The main kustomization's objects by (kind, name), with the two others' under the same keys."""
    return {(o["kind"], o["metadata"]["name"]): o
            for folder in KUSTOMIZATIONS for _, o in render(DEPLOY / folder)}


def _one(objects: dict, kind: str) -> dict:
    found = [o for (k, _), o in objects.items() if k == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _gateway(objects):
    dep = objects["Deployment", "brogue-gateway"]
    return dep, next(c for c in _containers(dep) if c["name"] == "gateway")


def _triton(objects):
    sts = objects["StatefulSet", "brogue-triton"]
    return sts, next(c for c in _containers(sts) if c["name"] == "triton")


def _argv(container: dict) -> list[str]:
    """What the container runs: its command (else the image's entrypoint) and its args."""
    return [*container.get("command", []), *container.get("args", [])]


def _serve_options(container: dict) -> dict:
    """The gateway container's options, as `brogue serve` itself parses them."""
    from brogue.cli import app

    assert container["command"] == ["brogue", "serve"]
    return typer.main.get_command(app).commands["serve"].make_context("serve", list(container["args"])).params


def _port(container: dict, port) -> int:
    """A probe's or Service's port (a name or a number) as the container's port number."""
    numbers = {p["containerPort"] for p in container["ports"]}
    by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port in by_name or port in numbers, f"port {port} is not a port of container {container['name']}"
    return by_name.get(port, port)


# -- schemas ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=lambda f: f"deploy/{f}")
def test_every_object_is_valid_against_the_schemas(folder):
    objects = render(DEPLOY / folder)
    assert objects
    for source, obj in objects:
        where = f"{source}: {obj['kind']}/{obj['metadata']['name']}"
        try:
            if obj["apiVersion"] == "monitoring.coreos.com/v1":
                jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)
            else:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as e:
            pytest.fail(f"{where}: {e.message} at {'.'.join(map(str, e.path))}")
        except kubernetes_validate.utils.SchemaNotFoundError as e:
            pytest.fail(f"{where}: {e.message}")


def test_every_manifest_is_in_a_kustomization():
    rendered = {source for folder in KUSTOMIZATIONS for source, _ in render(DEPLOY / folder)}
    files = {str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert files - NOT_MANIFESTS == rendered, "a manifest that no kustomization applies, or the reverse"


def test_the_renderer_refuses_what_it_cannot_render(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [missing.yaml]\n")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: []\npatches: []\n")
    with pytest.raises(ValueError, match="patches"):
        render(tmp_path)


def test_images_and_namespace_are_applied(deployment):
    for obj in deployment.values():
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == "brogue", obj["metadata"]["name"]
        for c in _containers(obj, init=True):
            assert re.fullmatch(r"[\w.-]+(/[\w.-]+)+:[\w.-]+", c["image"]), f"{c['name']}: {c['image']} unset"


# -- Triton ---------------------------------------------------------------------------------------------

def test_the_gateway_lists_each_triton_instance(deployment):
    sts, triton = _triton(deployment)
    service = deployment["Service", sts["spec"]["serviceName"]]
    assert service["spec"]["clusterIP"] == "None", "the StatefulSet's Service must be headless (one name per pod)"
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert not any(a.startswith("--grpc-port") for a in triton["args"])
    grpc = _port(triton, "grpc")
    assert grpc == 8001 and {"name": "grpc", "port": grpc, "targetPort": "grpc"} in service["spec"]["ports"]
    name = sts["metadata"]["name"]
    expected = [f"{name}-{i}.{service['metadata']['name']}:{grpc}" for i in range(sts["spec"]["replicas"])]
    assert _serve_options(_gateway(deployment)[1])["triton_url"] == expected


def test_triton_runs_the_command_brogue_runs(deployment):
    from brogue.server.triton_container import CONTAINER_PACKAGES, DEFAULT_IMAGE, TORCH_PACKAGE, docker_command

    sts, triton = _triton(deployment)
    docker = docker_command("/elsewhere", source=REPO, install=False)  # a repository outside the checkout: /models
    serve = docker[docker.index(DEFAULT_IMAGE) + 1:]
    assert "command" not in triton, "keep the image's entrypoint, as `docker run IMAGE tritonserver ...` does"
    assert triton["args"][:len(serve)] == serve
    assert "--model-control-mode=explicit" in triton["args"]
    env = {e["name"]: e["value"] for e in triton["env"]}
    for flag, value in zip(docker, docker[1:]):
        if flag == "-e":
            key, _, val = value.partition("=")
            assert env.get(key) == val, f"docker_command sets {value}"
    shm = next(m for m in triton["volumeMounts"] if m["mountPath"] == "/dev/shm")
    shm_volume = next(v for v in _pod(sts)["volumes"] if v["name"] == shm["name"])
    assert shm_volume["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}  # docker run --shm-size=1g
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in _pod(sts)["tolerations"]) and _pod(sts)["nodeSelector"]
    repo_mount = next(m for m in triton["volumeMounts"] if m["mountPath"] == "/models")
    assert repo_mount.get("readOnly") is True

    dockerfile = (DEPLOY / "triton.Dockerfile").read_text()
    assert re.findall(r"^FROM (\S+)", dockerfile, re.M) == [DEFAULT_IMAGE]
    provider = _gpu_settings(deployment)["parameters"]["EXECUTION_PROVIDER"]
    # every GPU provider keeps the state pool in torch tensors (docs/deploy-gpu.md), so each needs torch
    for package in [*CONTAINER_PACKAGES, *([TORCH_PACKAGE] if provider != "cpu" else [])]:
        assert f'"{package}"' in dockerfile, f"deploy/triton.Dockerfile does not install {package}"
    assert "--no-deps" in dockerfile


def _gpu_config_run(deployment, tmp_path: Path, settings: dict | None = None):
    """Run the Triton init container's gpu_config.py, as it runs there, on model_repo's
    asr_streaming/config.pbtxt (copied to ``tmp_path``): (the process, the settings, the config
    name, the model folder). ``settings`` replaces the ConfigMap's."""
    sts, triton = _triton(deployment)
    name = next(a.split("=", 1)[1] for a in triton["args"] if a.startswith("--model-config-name="))
    init = next(c for c in _pod(sts)["initContainers"] if c["name"] == "model-config")
    mount = next(m for m in init["volumeMounts"] if m["name"] == "triton-config")["mountPath"]
    volume = next(v for v in _pod(sts)["volumes"] if v["name"] == "triton-config")
    data = deployment["ConfigMap", volume["configMap"]["name"]]["data"]
    line = re.search(rf"^python3 {mount}/(\S+) /models/asr_streaming {mount}/(\S+) (\S+)$", _argv(init)[-1], re.M)
    assert line, "the init container runs gpu_config.py on /models/asr_streaming"
    script, settings_file, written = line.groups()
    assert written == name, "it must write the file that --model-config-name loads"
    settings = json.loads(data[settings_file]) if settings is None else settings
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / script).write_text(data[script])
    (tmp_path / "etc" / settings_file).write_text(json.dumps(settings))
    model = tmp_path / "asr_streaming"
    model.mkdir()
    shutil.copy(REPO / "model_repo" / "asr_streaming" / "config.pbtxt", model)
    run = subprocess.run([sys.executable, str(tmp_path / "etc" / script), str(model),
                          str(tmp_path / "etc" / settings_file), name], capture_output=True, text=True)
    return run, settings, name, model


def _gpu_settings(deployment) -> dict:
    return json.loads(deployment["ConfigMap", "brogue-triton-config"]["data"]["gpu.json"])


def test_the_gpu_model_config_is_config_pbtxt_with_the_gpu_settings(deployment, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from brogue.server.triton_repository import read_config

    run, settings, name, model = _gpu_config_run(deployment, tmp_path)
    assert run.returncode == 0, run.stderr
    gpu = text_format.Parse((model / "configs" / f"{name}.pbtxt").read_text(), model_config_pb2.ModelConfig())
    expected = read_config(REPO / "model_repo" / "asr_streaming")  # then exactly the settings' edits
    for key, value in settings["parameters"].items():
        expected.parameters[key].string_value = value
    del expected.instance_group[:]
    expected.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_GPU, count=1, gpus=[0])
    expected.sequence_batching.oldest.max_candidate_sequences = settings["max_candidate_sequences"]
    assert gpu == expected

    params = {k: v.string_value for k, v in gpu.parameters.items()}
    assert params["EXECUTION_PROVIDER"] in {"cuda", "tensorrt", "torch-cuda"}
    assert gpu.sequence_batching.oldest.max_candidate_sequences > int(params["MAX_STREAMS"])
    assert int(params["MAX_BATCH"]) <= gpu.max_batch_size
    export = REPO / "model_repo" / params["MODEL_DIR"]
    assert (export / "model.json").is_file()
    if params["EXECUTION_PROVIDER"].startswith("torch"):
        assert list(export.glob("*.ts")), f"{export}: no TorchScript steps for {params['EXECUTION_PROVIDER']}"

    # the gateway decodes with the model Triton serves, at the latencies it serves
    options = _serve_options(_gateway(deployment)[1])
    model_dir = options["model_dir"] or options["model_repository"] / "exported" / "demo"
    assert PurePosixPath(model_dir) == PurePosixPath("/models") / params["MODEL_DIR"]
    assert options["latencies"] == params["LATENCIES"]


def test_the_gpu_config_script_refuses_an_edit_it_cannot_make(deployment, tmp_path):
    settings = _gpu_settings(deployment)
    settings["parameters"]["NO_SUCH_PARAMETER"] = "1"
    run, _, name, model = _gpu_config_run(deployment, tmp_path, settings)
    assert run.returncode == 1 and "NO_SUCH_PARAMETER" in run.stderr
    assert not (model / "configs" / f"{name}.pbtxt").exists()


# -- gateway ----------------------------------------------------------------------------------------------

def _http_status(path: str, ready: bool) -> int:
    """What the gateway's HTTP port answers on ``path`` (server/websocket.py), with or without a ready Triton."""
    from brogue.server.metrics import Metrics
    from brogue.server.websocket import ConnectionLimits, WebSocketFrontEnd

    class Connection:
        def respond(self, status, text):
            return SimpleNamespace(status_code=int(status))

    front = WebSocketFrontEnd(SimpleNamespace(ready=ready, metrics=Metrics()), ConnectionLimits())
    return front.process_request(Connection(), SimpleNamespace(path=path, headers={})).status_code


def test_probes_ask_the_real_health_endpoints(deployment):
    dep, gateway = _gateway(deployment)
    options = _serve_options(gateway)
    scheme = "HTTPS" if options["tls_cert"] else "HTTP"
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = gateway[kind]["httpGet"]
        assert _port(gateway, get["port"]) == options["http_port"], kind
        assert get.get("scheme", "HTTP") == scheme, kind
        assert _http_status(get["path"], ready=True) == 200, f"{kind} {get['path']}"
        if kind == "readinessProbe":  # out of the Service while no Triton instance serves the model
            assert _http_status(get["path"], ready=False) == 503
        else:  # a restart cures nothing when Triton is away: liveness must not depend on it
            assert _http_status(get["path"], ready=False) == 200, f"{kind} {get['path']} fails without Triton"

    sts, triton = _triton(deployment)
    assert not any(a.startswith("--http-port") for a in triton["args"])  # Triton's default, 8000
    expected = {"startupProbe": "/v2/health/live", "livenessProbe": "/v2/health/live",
                "readinessProbe": "/v2/health/ready"}
    for kind, path in expected.items():
        assert triton[kind]["httpGet"]["path"] == path
        assert _port(triton, triton[kind]["httpGet"]["port"]) == 8000


def test_services_expose_the_public_ports_and_keep_admin_inside(deployment):
    dep, gateway = _gateway(deployment)
    options = _serve_options(gateway)
    assert options["host"] == "0.0.0.0" and options["admin_host"] == "0.0.0.0"
    public, admin = deployment["Service", "brogue-gateway"], deployment["Service", "brogue-gateway-admin"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    for service in (public, admin):
        assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["port"]: _port(gateway, p["targetPort"]) for p in public["spec"]["ports"]} == {
        8080: options["http_port"], 50051: options["grpc_port"]}
    assert admin["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert [_port(gateway, p["targetPort"]) for p in admin["spec"]["ports"]] == [options["admin_port"]]

    policy = deployment["NetworkPolicy", "brogue-gateway"]
    open_ports = {p["port"] for rule in policy["spec"]["ingress"] if "from" not in rule for p in rule["ports"]}
    assert options["admin_port"] not in open_ports and {options["http_port"], options["grpc_port"]} <= open_ports
    triton_policy = deployment["NetworkPolicy", "brogue-triton"]
    grpc_rule = next(r for r in triton_policy["spec"]["ingress"]
                     if {"port": 8001, "protocol": "TCP"} in r["ports"])
    assert [f["podSelector"]["matchLabels"] for f in grpc_rule["from"]] == [pod_labels]


def test_tenants_come_from_the_configmap_and_load(deployment, tmp_path):
    from brogue.server.tenants import TenantRegistry

    dep, gateway = _gateway(deployment)
    tenants_file = PurePosixPath(_serve_options(gateway)["tenants"])
    mount = next(m for m in gateway["volumeMounts"] if m["mountPath"] == str(tenants_file.parent))
    assert "subPath" not in mount, "a subPath mount is never updated: hot reload needs the folder mounted"
    volume = next(v for v in _pod(dep)["volumes"] if v["name"] == mount["name"])
    text = deployment["ConfigMap", volume["configMap"]["name"]]["data"][tenants_file.name]
    (tmp_path / "tenants.toml").write_text(text)
    tenants = TenantRegistry(tmp_path / "tenants.toml").tenants()  # brogue's own loader: raises if invalid
    assert tenants
    for tenant in tenants.values():  # the fill job copies model_repo's adapter store
        if tenant.adapter:
            assert (REPO / "model_repo" / "adapters" / tenant.adapter.replace("@", "/")).is_dir(), tenant.adapter


def test_secrets_stay_out_of_the_repository(deployment):
    dep, gateway = _gateway(deployment)
    options = _serve_options(gateway)
    for option, key in (("tls_cert", "tls.crt"), ("tls_key", "tls.key")):  # a kubernetes.io/tls Secret's keys
        path = PurePosixPath(options[option])
        mount = next(m for m in gateway["volumeMounts"] if m["mountPath"] == str(path.parent))
        volume = next(v for v in _pod(dep)["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == "brogue-gateway-tls" and path.name == key
    assert not [k for k, _ in deployment if k == "Secret"], "Secrets are created in the cluster, not committed"
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            assert "PRIVATE KEY" not in path.read_text(errors="replace"), path


def test_the_hpa_scales_the_gateway_on_active_streams(deployment):
    from brogue.server.metrics import Metrics

    hpa = _one(deployment, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "brogue-gateway")
    assert "replicas" not in deployment["Deployment", "brogue-gateway"]["spec"], "an apply would undo the HPA"
    pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert [p["metric"]["name"] for p in pods] == ["brogue_active_streams"]
    gauge = next(m for m in Metrics().registry.collect() if m.name == "brogue_active_streams")
    assert gauge.type == "gauge"

    adapter = yaml.safe_load((DEPLOY / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    [rule] = adapter["rules"]["custom"]
    assert rule["name"]["as"] == "brogue_active_streams"
    assert rule["seriesQuery"].startswith("brogue_active_streams{")
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert re.fullmatch(r"sum\(<<\.Series>>\{<<\.LabelMatchers>>\}\) by \(<<\.GroupBy>>\)", rule["metricsQuery"])


def test_prometheus_finds_both_metrics_endpoints(deployment):
    dep, gateway = _gateway(deployment)
    sts, triton = _triton(deployment)
    tls = bool(_serve_options(gateway)["tls_cert"])
    assert _http_status("/metrics", ready=False) == 200
    for workload, container, port, scheme in ((dep, gateway, 8080, "https" if tls else "http"),
                                              (sts, triton, 8002, "http")):
        notes = workload["spec"]["template"]["metadata"]["annotations"]  # annotation-based scraping
        assert notes["prometheus.io/scrape"] == "true" and notes["prometheus.io/path"] == "/metrics"
        assert _port(container, int(notes["prometheus.io/port"])) == port
        assert notes["prometheus.io/scheme"] == scheme
        # the Prometheus Operator: the one ServiceMonitor of these pods, through the one Service it selects
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        [monitor] = [o for (k, _), o in deployment.items() if k == "ServiceMonitor"
                     and o["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()]
        [service] = [o for (k, _), o in deployment.items() if k == "Service"
                     and monitor["spec"]["selector"]["matchLabels"].items() <= o["metadata"]["labels"].items()]
        [endpoint] = monitor["spec"]["endpoints"]
        service_port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
        assert _port(container, service_port["targetPort"]) == port
        assert endpoint["path"] == "/metrics" and endpoint["scheme"] == scheme


def test_the_gateway_drains_within_its_grace_period(deployment):
    from brogue.server.app import DRAIN_SECONDS

    dep, gateway = _gateway(deployment)
    command = gateway["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    forced_close = 2  # server/app.py _drain: after DRAIN_SECONDS, 2 s more for the handlers to finish
    needed = float(command[1]) + DRAIN_SECONDS + forced_close
    assert _pod(dep)["terminationGracePeriodSeconds"] > needed, f"SIGKILL before the drain ends ({needed} s)"
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_model_repository_volume_is_filled_then_shared(deployment):
    pvc = deployment["PersistentVolumeClaim", "brogue-model-repo"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    job = deployment["Job", "brogue-model-repo-fill"]
    fill = job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    marker = "/models/.brogue-filled"
    steps = [line.strip() for line in fill.splitlines()]
    assert steps.index(f"touch {marker}") > steps.index("cp -R /model_repo/. /models/"), "the marker comes last"
    dep = deployment["Deployment", "brogue-gateway"]
    uid = _pod(dep)["securityContext"]["runAsUser"]
    assert f"chown -R {uid}:{uid} /models/adapters" in fill, "the gateway writes published adapters there"
    for obj in (job, dep, deployment["StatefulSet", "brogue-triton"]):
        claims = [v["persistentVolumeClaim"]["claimName"] for v in _pod(obj)["volumes"]
                  if "persistentVolumeClaim" in v]
        assert claims == ["brogue-model-repo"], obj["metadata"]["name"]
        if obj is not job:
            [init] = [c for c in _pod(obj)["initContainers"]
                      if "/models" in {m["mountPath"] for m in c["volumeMounts"]}]
            assert f"until [ -f {marker} ]" in _argv(init)[-1], f"{obj['metadata']['name']} waits for the fill"
    gateway_mount = next(m for m in _gateway(deployment)[1]["volumeMounts"] if m["mountPath"] == "/models")
    assert not gateway_mount.get("readOnly"), "admin PublishAdapter writes into /models/adapters"


def test_the_gateway_image_is_the_package_without_extras():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    for dockerfile in ("Dockerfile", "triton.Dockerfile"):
        text = (DEPLOY / dockerfile).read_text()
        copied = {m.split("/")[0] for m in re.findall(r"^COPY (?!--)(\S+) ", text, re.M)}
        assert folders <= copied, f"deploy/{dockerfile} leaves out {folders - copied}"
        ignore = (DEPLOY / f"{dockerfile}.dockerignore").read_text().splitlines()
        assert {f"!{f}" for f in folders} <= set(ignore), f"deploy/{dockerfile}.dockerignore leaves out a package"
    gateway = (DEPLOY / "Dockerfile").read_text()
    installs = " ".join(re.findall(r"pip (?:install|wheel)[^\n]*", gateway))
    assert "[" not in installs and not re.search(r"torch|nemo|pytriton", installs, re.I)
    assert "model_repo" in (DEPLOY / "model-repo.Dockerfile").read_text()
