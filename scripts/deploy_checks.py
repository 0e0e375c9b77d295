"""Checks of the deployment files that need more than a schema; used by scripts/check-deploy.

    python deploy_checks.py render DIR              kustomization DIR rendered without kustomize
    python deploy_checks.py same-objects A B        A and B hold the same objects (any order)
    python deploy_checks.py split FILE CORE CRD     built-in kinds to CORE, Prometheus Operator kinds to CRD
    python deploy_checks.py crds FILE               ServiceMonitor / PrometheusRule structure
    python deploy_checks.py rules RULE RULES_YML    PrometheusRule spec.groups == rules.yml groups
    python deploy_checks.py references FILE DIR     the objects of FILE (rendered from DIR) and the
                                                    examples in DIR refer to each other correctly
    python deploy_checks.py shutdown FILE COMPOSE   grace periods cover the gateway's shutdown
    python deploy_checks.py dockerfile DOCKERFILE FILE   image and manifests agree
    python deploy_checks.py compose COMPOSE ENV_EXAMPLE  dev secrets agree, the JWT verifies
    python deploy_checks.py gateway-env k8s FILE DIR     write the TOML and env of FILE into DIR
    python deploy_checks.py gateway-env compose COMPOSE DIR

Every command exits 0 when its check holds and prints what is wrong otherwise (exit 1).
Needs PyYAML (from the venv scripts/check-deploy installs) and Python 3.11+ (tomllib).
"""

import base64
import hashlib
import hmac
import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "PriorityClass", "StorageClass", "PersistentVolume", "IngressClass",
    "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration",
}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
# The pattern of Prometheus Operator's Duration type.
DURATION = re.compile(
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)

errors: list[str] = []


def err(message: str) -> None:
    errors.append(message)


def finish() -> None:
    if errors:
        print("\n".join(errors))
        sys.exit(1)
    sys.exit(0)


def load_all(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def name_of(doc: dict) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def dump_all(docs: list[dict]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False)


# --- render: the subset of kustomize this kustomization uses ---------------------------

def pod_spec(doc: dict) -> dict | None:
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind in WORKLOADS:
        return (spec.get("template") or {}).get("spec")
    if kind == "CronJob":
        return (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec")
    if kind == "Pod":
        return spec
    return None


def split_image(image: str) -> tuple[str, str]:
    """('registry/name', ':tag' or '@digest' or '')."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def render(directory: str) -> None:
    base = Path(directory)
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text(encoding="utf-8"))
    supported = {"apiVersion", "kind", "namespace", "resources", "images"}
    unsupported = set(kustomization) - supported
    if unsupported:
        sys.exit(f"render: kustomization keys this renderer does not implement: {sorted(unsupported)}")
    namespace = kustomization.get("namespace")
    docs = []
    for resource in kustomization.get("resources", []):
        path = base / resource
        if not path.is_file():
            sys.exit(f"render: {resource} is not a file (folders and URLs are not implemented)")
        docs.extend(load_all(path))
    for doc in docs:
        if namespace and doc.get("kind") not in CLUSTER_SCOPED:
            doc.setdefault("metadata", {})["namespace"] = namespace
        spec = pod_spec(doc)
        if not spec:
            continue
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            name, suffix = split_image(container.get("image", ""))
            for image in kustomization.get("images", []):
                if image.get("name") != name:
                    continue
                new_name = image.get("newName", name)
                if "digest" in image:
                    suffix = "@" + image["digest"]
                elif "newTag" in image:
                    suffix = ":" + str(image["newTag"])
                container["image"] = new_name + suffix
    sys.stdout.write(dump_all(docs))


def same_objects(a: str, b: str) -> None:
    def keyed(path):
        return {
            (d.get("kind"), (d.get("metadata") or {}).get("namespace"), (d.get("metadata") or {}).get("name")): d
            for d in load_all(path)
        }

    left, right = keyed(a), keyed(b)
    for key in sorted(set(left) | set(right), key=str):
        if key not in left:
            err(f"only in {b}: {key}")
        elif key not in right:
            err(f"only in {a}: {key}")
        elif left[key] != right[key]:
            err(f"differs: {key}")
    finish()


def split(path: str, core_out: str, crd_out: str) -> None:
    docs = load_all(path)
    core = [d for d in docs if d.get("kind") not in CRD_KINDS]
    crds = [d for d in docs if d.get("kind") in CRD_KINDS]
    if not core:
        sys.exit(f"{path}: no objects")
    Path(core_out).write_text(dump_all(core), encoding="utf-8")
    Path(crd_out).write_text(dump_all(crds), encoding="utf-8")
    print(f"{len(core)} built-in, {len(crds)} Prometheus Operator objects")


# --- crds: structure of the two Prometheus Operator kinds -----------------------------------

def check_keys(where: str, value, allowed: set, required: set = frozenset()) -> bool:
    if not isinstance(value, dict):
        err(f"{where}: must be a mapping")
        return False
    for key in sorted(set(value) - allowed):
        err(f"{where}: unknown field {key!r}")
    for key in sorted(required - set(value)):
        err(f"{where}: missing {key!r}")
    return True


def check_string_map(where: str, value) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        err(f"{where}: must map strings to strings")


def check_duration(where: str, value) -> None:
    if not isinstance(value, str) or not DURATION.match(value):
        err(f"{where}: {value!r} is not a Prometheus duration")


def duration_seconds(value: str) -> float:
    units = {"y": 31536000, "w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|y|w|d|h|m|s)", value))


def check_metadata(where: str, doc: dict) -> None:
    meta = doc.get("metadata")
    if check_keys(f"{where}.metadata", meta, {"name", "namespace", "labels", "annotations"}, {"name"}):
        if not isinstance(meta.get("name"), str) or not meta["name"]:
            err(f"{where}.metadata.name: must be a non-empty string")
        for key in ("labels", "annotations"):
            if key in meta:
                check_string_map(f"{where}.metadata.{key}", meta[key])


def check_selector(where: str, selector) -> None:
    if check_keys(where, selector, {"matchLabels", "matchExpressions"}):
        if "matchLabels" in selector:
            check_string_map(f"{where}.matchLabels", selector["matchLabels"])
        if not selector:
            err(f"{where}: empty selector (selects every Service)")


ENDPOINT_KEYS = {
    "port", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout", "tlsConfig",
    "bearerTokenFile", "bearerTokenSecret", "authorization", "honorLabels", "honorTimestamps",
    "trackTimestampsStaleness", "basicAuth", "oauth2", "metricRelabelings", "relabelings",
    "proxyUrl", "followRedirects", "enableHttp2", "filterRunning",
}


def check_service_monitor(where: str, doc: dict) -> None:
    spec = doc.get("spec")
    allowed = {
        "selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels",
        "podTargetLabels", "sampleLimit", "targetLimit", "labelLimit", "labelNameLengthLimit",
        "labelValueLengthLimit", "keepDroppedTargets", "attachMetadata", "scrapeClass",
        "scrapeProtocols", "fallbackScrapeProtocol", "bodySizeLimit",
    }
    if not check_keys(f"{where}.spec", spec, allowed, {"selector", "endpoints"}):
        return
    check_selector(f"{where}.spec.selector", spec.get("selector"))
    endpoints = spec.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        err(f"{where}.spec.endpoints: must be a non-empty list")
        return
    for i, endpoint in enumerate(endpoints):
        at = f"{where}.spec.endpoints[{i}]"
        if not check_keys(at, endpoint, ENDPOINT_KEYS):
            continue
        if not isinstance(endpoint.get("port"), str) or not endpoint["port"]:
            err(f"{at}.port: must name a Service port")
        if not str(endpoint.get("path", "/metrics")).startswith("/"):
            err(f"{at}.path: must start with /")
        if endpoint.get("scheme", "http") not in ("http", "https"):
            err(f"{at}.scheme: must be http or https")
        for key in ("interval", "scrapeTimeout"):
            if key in endpoint:
                check_duration(f"{at}.{key}", endpoint[key])
        if "interval" in endpoint and "scrapeTimeout" in endpoint:
            if DURATION.match(str(endpoint["interval"])) and DURATION.match(str(endpoint["scrapeTimeout"])):
                if duration_seconds(endpoint["scrapeTimeout"]) > duration_seconds(endpoint["interval"]):
                    err(f"{at}: scrapeTimeout is longer than interval")


def check_prometheus_rule(where: str, doc: dict) -> None:
    spec = doc.get("spec")
    if not check_keys(f"{where}.spec", spec, {"groups"}, {"groups"}):
        return
    groups = spec.get("groups")
    if not isinstance(groups, list) or not groups:
        err(f"{where}.spec.groups: must be a non-empty list")
        return
    names = set()
    for i, group in enumerate(groups):
        at = f"{where}.spec.groups[{i}]"
        allowed = {"name", "interval", "rules", "partial_response_strategy", "limit", "query_offset", "labels"}
        if not check_keys(at, group, allowed, {"name", "rules"}):
            continue
        if not isinstance(group.get("name"), str) or not group["name"]:
            err(f"{at}.name: must be a non-empty string")
        elif group["name"] in names:
            err(f"{at}.name: {group['name']!r} is used twice")
        names.add(group.get("name"))
        if "interval" in group:
            check_duration(f"{at}.interval", group["interval"])
        rules = group.get("rules")
        if not isinstance(rules, list):
            err(f"{at}.rules: must be a list")
            continue
        for j, rule in enumerate(rules):
            rat = f"{at}.rules[{j}]"
            allowed = {"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
            if not check_keys(rat, rule, allowed, {"expr"}):
                continue
            if ("record" in rule) == ("alert" in rule):
                err(f"{rat}: needs exactly one of record and alert")
            if not isinstance(rule.get("expr"), (str, int)) or rule.get("expr") == "":
                err(f"{rat}.expr: must be a non-empty string")
            if "record" in rule and {"for", "keep_firing_for", "annotations"} & set(rule):
                err(f"{rat}: a recording rule takes no for, keep_firing_for or annotations")
            for key in ("for", "keep_firing_for"):
                if key in rule:
                    check_duration(f"{rat}.{key}", rule[key])
            for key in ("labels", "annotations"):
                if key in rule:
                    check_string_map(f"{rat}.{key}", rule[key])


def crds(path: str) -> None:
    docs = load_all(path)
    kinds = {d.get("kind") for d in docs}
    for kind in sorted(CRD_KINDS - kinds):
        err(f"{path}: no {kind}")
    for doc in docs:
        where = name_of(doc)
        check_keys(where, doc, {"apiVersion", "kind", "metadata", "spec"}, {"apiVersion", "kind", "metadata", "spec"})
        if doc.get("apiVersion") != "monitoring.coreos.com/v1":
            err(f"{where}: apiVersion must be monitoring.coreos.com/v1")
        check_metadata(where, doc)
        if doc.get("kind") == "ServiceMonitor":
            check_service_monitor(where, doc)
        elif doc.get("kind") == "PrometheusRule":
            check_prometheus_rule(where, doc)
        else:
            err(f"{where}: not a Prometheus Operator kind")
    finish()


def rules(rule_path: str, rules_path: str) -> None:
    rule = next((d for d in load_all(rule_path) if d.get("kind") == "PrometheusRule"), None)
    if rule is None:
        sys.exit(f"{rule_path}: no PrometheusRule")
    with open(rules_path, encoding="utf-8") as f:
        expected = yaml.safe_load(f)
    if (rule.get("spec") or {}).get("groups") != expected.get("groups"):
        sys.exit(f"{rule_path}: spec.groups differ from the groups of {rules_path}")
    if set(rule.get("spec") or {}) != {"groups"} or set(expected) != {"groups"}:
        sys.exit("only `groups` may be in the rule file and in the PrometheusRule's spec")
    sys.exit(0)


# --- references: the objects point at each other correctly --------------------------------

def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def references(path: str, directory: str) -> None:
    docs = load_all(path)
    deployments = by_kind(docs, "Deployment")
    if len(deployments) != 1:
        sys.exit(f"{path}: expected one Deployment, found {len(deployments)}")
    deployment = deployments[0]
    template = deployment["spec"]["template"]
    pod_labels = template["metadata"]["labels"]
    spec = template["spec"]
    container = spec["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    configmaps = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    namespaces = {d["metadata"]["name"] for d in by_kind(docs, "Namespace")}

    if not matches(deployment["spec"]["selector"].get("matchLabels"), pod_labels):
        err("Deployment: selector does not match its pod template's labels")
    for doc in docs:
        ns = (doc.get("metadata") or {}).get("namespace")
        if doc.get("kind") != "Namespace" and ns not in namespaces:
            err(f"{name_of(doc)}: namespace {ns!r} is not created by the kustomization")

    services = by_kind(docs, "Service")
    for service in services:
        if not matches(service["spec"].get("selector"), pod_labels):
            err(f"{name_of(service)}: selector does not match the gateway pods")
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if isinstance(target, str) and target not in ports:
                err(f"{name_of(service)}: targetPort {target!r} is no container port")
    service_ports = {p["name"] for s in services for p in s["spec"]["ports"]}
    for monitor in by_kind(docs, "ServiceMonitor"):
        selected = [s for s in services if matches(monitor["spec"]["selector"].get("matchLabels"), s["metadata"].get("labels", {}))]
        if not selected:
            err(f"{name_of(monitor)}: selects no Service")
        for endpoint in monitor["spec"]["endpoints"]:
            if endpoint.get("port") not in service_ports:
                err(f"{name_of(monitor)}: port {endpoint.get('port')!r} is no Service port")
            if endpoint.get("port") != "metrics" or endpoint.get("path", "/metrics") != "/metrics":
                err(f"{name_of(monitor)}: must scrape /metrics on the `metrics` (admin) port")
        if any(s["metadata"]["name"] != "sessiongate" for s in selected) and "jobLabel" not in monitor["spec"]:
            err(f"{name_of(monitor)}: the alert rules expect job=\"sessiongate\" (the Service's name)")
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for doc in by_kind(docs, kind):
            key = "selector" if kind == "PodDisruptionBudget" else "podSelector"
            if not matches(doc["spec"][key].get("matchLabels"), pod_labels) or not doc["spec"][key].get("matchLabels"):
                err(f"{name_of(doc)}: {key} does not select the gateway pods")
    for policy in by_kind(docs, "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                if isinstance(port.get("port"), str) and port["port"] not in ports:
                    err(f"{name_of(policy)}: port {port['port']!r} is no container port")
        # The internal API's port is for the backends, never for whoever reaches the public
        # one (the ingress controller): no rule admits both, and no peer of a rule for the
        # public port is a peer of a rule for the internal one.
        if "internal" in ports:
            peers: dict[str, list] = {"http": [], "internal": []}
            for rule in policy["spec"].get("ingress", []):
                named = {p.get("port") for p in rule.get("ports", [])}
                if not rule.get("ports"):
                    err(f"{name_of(policy)}: a rule without ports admits the internal port too")
                if {"http", "internal"} <= named:
                    err(f"{name_of(policy)}: one rule admits both the public and the internal port")
                for name in peers:
                    if name in named:
                        peers[name].extend(rule.get("from", [{}]))
            for peer in peers["internal"]:
                if peer in peers["http"]:
                    err(f"{name_of(policy)}: {peer} may reach the public and the internal port")
            if not peers["internal"]:
                err(f"{name_of(policy)}: nothing may reach the internal port")
    for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        if (target.get("kind"), target.get("name")) != ("Deployment", deployment["metadata"]["name"]):
            err(f"{name_of(hpa)}: scaleTargetRef is not the Deployment")
        if hpa["spec"].get("minReplicas", 1) > deployment["spec"].get("replicas", 1):
            err(f"{name_of(hpa)}: minReplicas is above the Deployment's replicas")

    # Configuration: env from ConfigMaps that exist, the TOML mounted where it is read.
    env = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef", {}).get("name")
        if ref not in configmaps:
            err(f"Deployment: envFrom ConfigMap {ref!r} is not in the kustomization")
        else:
            env.update(configmaps[ref].get("data", {}))
    secret_keys = []
    for var in container.get("env", []):
        ref = (var.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            secret_keys.append((ref["name"], ref["key"], var["name"]))
        else:
            env[var["name"]] = var.get("value")
    if by_kind(docs, "Secret"):
        err("a Secret is part of the kustomization: keep real secrets out of the repository")
    secret = load_all(Path(directory) / "secret.example.yaml")[0]
    for name, key, var in secret_keys:
        if name != secret["metadata"]["name"] or key not in secret.get("stringData", {}):
            err(f"Deployment: {var} reads {name}/{key}, which secret.example.yaml does not have")
    # The example Ingress routes the public API only, to the Service's http port.
    http_services = {
        s["metadata"]["name"] for s in services
        if any(p["name"] == "http" and p.get("targetPort") in ("http", ports.get("http")) for p in s["spec"]["ports"])
    }
    for ingress in load_all(Path(directory) / "ingress.example.yaml"):
        for rule in ingress["spec"].get("rules", []):
            for route in (rule.get("http") or {}).get("paths", []):
                backend = route["backend"]["service"]
                if not str(route.get("path", "")).startswith("/api/"):
                    err(f"ingress.example.yaml: path {route.get('path')!r} would route more than /api/ "
                        "(gateway-mode routes aside, the public listener serves nothing else)")
                if backend["name"] not in http_services or backend["port"].get("name") != "http":
                    err(f"ingress.example.yaml: backend {backend} is not the public Service's http port")
    # The internal listener: its own Service, which exposes nothing else.
    for service in services:
        targets = {p.get("targetPort", p["port"]) for p in service["spec"]["ports"]}
        if targets & {"internal", ports.get("internal")} - {None} and len(targets) > 1:
            err(f"{name_of(service)}: exposes the internal port beside others; give it a Service of its own")
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    config_path = env.get("SESSIONGATE_CONFIG")
    found_config = False
    for volume in spec.get("volumes", []):
        cm = volume.get("configMap")
        if not cm or volume["name"] not in mounts:
            continue
        if cm["name"] not in configmaps:
            err(f"Deployment: volume {volume['name']!r} uses ConfigMap {cm['name']!r}, which is not in the kustomization")
            continue
        data = configmaps[cm["name"]].get("data", {})
        for item in cm.get("items", [{"key": k, "path": k} for k in data]):
            if item["key"] not in data:
                err(f"Deployment: ConfigMap {cm['name']!r} has no key {item['key']!r}")
            if f"{mounts[volume['name']].rstrip('/')}/{item['path']}" == config_path:
                found_config = True
                try:
                    tomllib.loads(data.get(item["key"], ""))
                except tomllib.TOMLDecodeError as e:
                    err(f"ConfigMap {cm['name']}/{item['key']}: not valid TOML: {e}")
    if config_path and not found_config:
        err(f"SESSIONGATE_CONFIG={config_path} is not a file mounted from a ConfigMap")

    # Addresses: what the gateway listens on is what the pod, the probes and the Service use.
    def port_of(var):
        value = env.get(var) or ""
        return int(value.rsplit(":", 1)[1]) if ":" in value else None

    if port_of("SESSIONGATE_LISTEN") != ports.get("http"):
        err("SESSIONGATE_LISTEN's port is not the container port `http`")
    if port_of("SESSIONGATE_ADMIN_LISTEN") != ports.get("metrics"):
        err("SESSIONGATE_ADMIN_LISTEN's port is not the container port `metrics`")
    if port_of("SESSIONGATE_INTERNAL_LISTEN") != ports.get("internal"):
        err("SESSIONGATE_INTERNAL_LISTEN's port is not the container port `internal` "
            "(SECURITY.md: the internal API belongs on a listener of its own)")
    for var in ("SESSIONGATE_LISTEN", "SESSIONGATE_ADMIN_LISTEN", "SESSIONGATE_INTERNAL_LISTEN"):
        if not str(env.get(var, "")).startswith("0.0.0.0:"):
            err(f"{var} must listen on 0.0.0.0 in a pod")
    if "internal" in ports and not any(
        p.get("targetPort") in ("internal", ports["internal"]) for s in services for p in s["spec"]["ports"]
    ):
        err("no Service exposes the container port `internal`: backends cannot reach the internal API")
    probes = {
        "livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz",
    }
    for probe, path_ in probes.items():
        get = (container.get(probe) or {}).get("httpGet") or {}
        if get.get("path") != path_ or get.get("port") not in ("metrics", ports.get("metrics")):
            err(f"Deployment: {probe} must GET {path_} on the admin port")

    # A Service named sessiongate* makes the kubelet inject SESSIONGATE_*_SERVICE_HOST etc.,
    # which the gateway refuses as unknown settings.
    if spec.get("enableServiceLinks") is not False and any(
        s["metadata"]["name"].upper().replace("-", "_").startswith("SESSIONGATE") for s in services
    ):
        err("Deployment: enableServiceLinks must be false (service links inject unknown SESSIONGATE_* variables)")
    for var in env:
        if var.startswith("SESSIONGATE_") and var not in KNOWN_SESSIONGATE_VARIABLES:
            err(f"ConfigMap: {var} is not a setting the gateway knows")

    # Hardening asked of every pod.
    pod_sc = spec.get("securityContext", {})
    sc = container.get("securityContext", {})
    if not (pod_sc.get("runAsNonRoot") or sc.get("runAsNonRoot")):
        err("Deployment: runAsNonRoot is not set")
    if sc.get("readOnlyRootFilesystem") is not True:
        err("Deployment: readOnlyRootFilesystem is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        err("Deployment: allowPrivilegeEscalation is not false")
    if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
        err("Deployment: capabilities must drop ALL")
    if (pod_sc.get("seccompProfile") or sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        err("Deployment: seccompProfile is not RuntimeDefault")
    resources = container.get("resources", {})
    for part in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in resources.get(part, {}):
                err(f"Deployment: resources.{part}.{resource} is not set")
    finish()


# The SESSIONGATE_* variables of the README's configuration table, which a unit test keeps
# equal to the code's (src/config/table.rs refuses others).
KNOWN_SESSIONGATE_VARIABLES = set(
    re.findall(r"^\| `(SESSIONGATE_[A-Z_]+)`", (Path(__file__).parent.parent / "README.md").read_text(), re.M)
)


# --- shutdown: every grace period covers the gateway's own ---------------------------------

def gateway_toml(docs: list[dict]) -> dict:
    for cm in by_kind(docs, "ConfigMap"):
        for key, value in (cm.get("data") or {}).items():
            if key.endswith(".toml"):
                return tomllib.loads(value)
    return {}


def compose_seconds(value: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"([0-9.]+)(ms|us|h|m|s)", str(value))
    if not parts or "".join(n + u for n, u in parts) != str(value):
        raise ValueError(f"{value!r} is not a compose duration")
    return sum(float(n) * units[u] for n, u in parts)


def shutdown(path: str, compose_path: str) -> None:
    docs = load_all(path)
    config = gateway_toml(docs)
    # Defaults of the README's configuration table.
    grace = config.get("http", {}).get("shutdown_grace_ms", 30000) / 1000
    drain = config.get("flush", {}).get("drain_ms", 10000) / 1000
    spec = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    pre_stop = spec["containers"][0].get("lifecycle", {}).get("preStop", {})
    command = (pre_stop.get("exec") or {}).get("command") or []
    sleep = float(command[1]) if command[:1] == ["sleep"] and len(command) == 2 else 0.0
    sleep = max(sleep, float((pre_stop.get("sleep") or {}).get("seconds", 0)))
    if sleep < 2:
        err("Deployment: preStop should sleep a few seconds so endpoints update before SIGTERM")
    period = spec.get("terminationGracePeriodSeconds", 30)
    if period < sleep + grace + drain:
        err(f"Deployment: terminationGracePeriodSeconds {period} < preStop {sleep:g} s + "
            f"shutdown grace {grace:g} s + drain {drain:g} s")
    with open(compose_path, encoding="utf-8") as f:
        gateway = yaml.safe_load(f)["services"]["gateway"]
    # The compose gateway has no TOML file: the defaults apply (30 s and 10 s).
    if "SESSIONGATE_CONFIG" in (gateway.get("environment") or {}):
        err("compose: the gateway reads a TOML file; teach this check its grace and drain")
    stop = compose_seconds(gateway.get("stop_grace_period", "10s"))
    if stop < 30 + 10:
        err(f"compose: gateway stop_grace_period {stop:g} s < shutdown grace 30 s + drain 10 s (the defaults)")
    if gateway.get("stop_signal", "SIGTERM") != "SIGTERM":
        err("compose: gateway stop_signal must be SIGTERM")
    finish()


# --- dockerfile: the image and the manifests agree ----------------------------------------

def dockerfile(docker_path: str, path: str) -> None:
    text = Path(docker_path).read_text(encoding="utf-8")
    # Instructions, continuation lines joined, comments dropped.
    lines = re.sub(r"\\\n\s*", " ", "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#")))
    instructions = [l.strip() for l in lines.splitlines() if l.strip()]
    froms = [l.split()[1] for l in instructions if l.upper().startswith("FROM ")]
    if len(froms) < 2 or not froms[0].startswith("rust:1-bookworm"):
        err(f"Dockerfile: expected a rust:1-bookworm builder and a runtime stage, found {froms}")
    elif froms[-1] not in ("debian:bookworm-slim",) and not froms[-1].startswith("gcr.io/distroless/cc"):
        err(f"Dockerfile: runtime stage is {froms[-1]}, not debian:bookworm-slim or distroless cc")
    if "cargo build --release --locked" not in lines:
        err("Dockerfile: does not run cargo build --release --locked")
    if "--mount=type=cache" not in lines:
        err("Dockerfile: no BuildKit cache mounts")
    expose = {int(p.split("/")[0]) for l in instructions if l.upper().startswith("EXPOSE ") for p in l.split()[1:]}
    users = [l.split()[1] for l in instructions if l.upper().startswith("USER ")]
    stop = [l.split()[1] for l in instructions if l.upper().startswith("STOPSIGNAL ")]
    health = [l for l in instructions if l.upper().startswith("HEALTHCHECK ")]
    env = dict(re.findall(r"\b(SESSIONGATE_[A-Z_]+)=(\S+)", " ".join(l for l in instructions if l.upper().startswith("ENV "))))
    if stop != ["SIGTERM"]:
        err(f"Dockerfile: STOPSIGNAL is {stop}, not SIGTERM")
    if len(health) != 1 or "/healthz" not in health[0] or "SESSIONGATE_ADMIN_LISTEN" not in health[0]:
        err("Dockerfile: needs one HEALTHCHECK that GETs /healthz on the admin listener's port")
    if not users or users[-1].split(":")[0] == "0" or not users[-1].split(":")[0].isdigit():
        err(f"Dockerfile: the last USER must be a numeric non-root uid, found {users}")
    docs = load_all(path)
    deployment = by_kind(docs, "Deployment")[0]
    spec = deployment["spec"]["template"]["spec"]
    # The image sets the public and admin listeners; the internal one (`internal`) is the
    # manifests' choice, so EXPOSE need not list it.
    named = {p["name"]: p["containerPort"] for p in spec["containers"][0]["ports"]}
    ports = {port for name, port in named.items() if name in ("http", "metrics")}
    if expose != ports:
        err(f"Dockerfile: EXPOSE {sorted(expose)} differs from the container ports `http` and `metrics` {sorted(ports)}")
    uid = (spec.get("securityContext") or {}).get("runAsUser")
    if users and uid is not None and str(uid) != users[-1].split(":")[0]:
        err(f"Dockerfile: USER {users[-1]} differs from runAsUser {uid}")
    for var, port in (("SESSIONGATE_LISTEN", "8080"), ("SESSIONGATE_ADMIN_LISTEN", "9090")):
        if env.get(var) != f"0.0.0.0:{port}":
            err(f"Dockerfile: ENV {var} should default to 0.0.0.0:{port}, found {env.get(var)}")
    finish()


# --- compose: dev secrets agree and the service-role key verifies ---------------------------

DEFAULT = re.compile(r"\$\{([A-Z0-9_]+):-([^}]*)\}")


def read_env_file(path: str) -> dict:
    values = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def verify_hs256(token: str, secret: str) -> dict | None:
    def b64decode(part):
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    try:
        header, payload, signature = token.split(".")
        expected = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
        if json.loads(b64decode(header)).get("alg") != "HS256" or not hmac.compare_digest(expected, b64decode(signature)):
            return None
        return json.loads(b64decode(payload))
    except (ValueError, json.JSONDecodeError):
        return None


def compose(compose_path: str, env_path: str) -> None:
    text = Path(compose_path).read_text(encoding="utf-8")
    example = read_env_file(env_path)
    defaults: dict[str, set] = {}
    for name, value in DEFAULT.findall(text):
        defaults.setdefault(name, set()).add(value)
    for name, values in sorted(defaults.items()):
        if len(values) > 1:
            err(f"compose: ${{{name}}} has different defaults: {sorted(values)}")
        if name in example and example[name] not in values:
            err(f"compose: the default of ${{{name}}} differs from {env_path}")
    for name in sorted(set(example) - set(defaults)):
        err(f"{env_path}: {name} is not used with a default in the compose file")
    secret, key = example.get("PGRST_JWT_SECRET", ""), example.get("SUPABASE_SERVICE_ROLE_KEY", "")
    if len(secret) < 32:
        err("PGRST_JWT_SECRET must have at least 32 characters (PostgREST refuses shorter ones)")
    claims = verify_hs256(key, secret)
    if claims is None:
        err("SUPABASE_SERVICE_ROLE_KEY is not an HS256 JWT signed with PGRST_JWT_SECRET")
    elif claims.get("role") != "service_role":
        err(f"SUPABASE_SERVICE_ROLE_KEY carries role {claims.get('role')!r}, not service_role")
    if len(example.get("SESSIONGATE_SERVICE_TOKEN", "")) < 16:
        err("SESSIONGATE_SERVICE_TOKEN must have at least 16 characters")
    for name, value in example.items():
        if any(word in name for word in ("PASSWORD", "SECRET", "KEY", "TOKEN")) and name != "SUPABASE_SERVICE_ROLE_KEY":
            if "dev-only" not in value:
                err(f"{env_path}: {name} is not marked dev-only in its value")
    finish()


# --- gateway-env: what the real binary is started with --------------------------------------

def resolve_defaults(value: str) -> str:
    return DEFAULT.sub(lambda m: m.group(2), str(value))


def gateway_env(mode: str, path: str, out_dir: str) -> None:
    out = Path(out_dir)
    env: dict[str, str] = {}
    if mode == "k8s":
        docs = load_all(path)
        for cm in by_kind(docs, "ConfigMap"):
            for key, value in (cm.get("data") or {}).items():
                if key.endswith(".toml"):
                    (out / "sessiongate.toml").write_text(value, encoding="utf-8")
                else:
                    env[key] = value
        env["SESSIONGATE_CONFIG"] = str(out / "sessiongate.toml")
        # The Secret's values are placeholders (secret.example.yaml); stand-ins of the right
        # shape take their place. REDIS_URL is set below.
        env["SUPABASE_SERVICE_ROLE_KEY"] = "stand-in-service-role-key"
        env["SESSIONGATE_SERVICE_TOKEN"] = "stand-in-token-0123456789"
    elif mode == "compose":
        with open(path, encoding="utf-8") as f:
            gateway = yaml.safe_load(f)["services"]["gateway"]
        env = {k: resolve_defaults(v) for k, v in gateway.get("environment", {}).items()}
    else:
        sys.exit(f"gateway-env: unknown mode {mode}")
    # Ports 0 and a Redis that is not there: only the configuration is under test.
    env.update({
        "SESSIONGATE_LISTEN": "127.0.0.1:0",
        "SESSIONGATE_ADMIN_LISTEN": "127.0.0.1:0",
        "REDIS_URL": "redis://127.0.0.1:1",
    })
    if "SESSIONGATE_INTERNAL_LISTEN" in env:
        env["SESSIONGATE_INTERNAL_LISTEN"] = "127.0.0.1:0"
    (out / "env").write_text("".join(f"{k}={v}\n" for k, v in sorted(env.items())), encoding="utf-8")
    sys.exit(0)


COMMANDS = {
    "render": (render, 1), "same-objects": (same_objects, 2), "split": (split, 3),
    "crds": (crds, 1), "rules": (rules, 2), "references": (references, 2),
    "shutdown": (shutdown, 2), "dockerfile": (dockerfile, 2), "compose": (compose, 2),
    "gateway-env": (gateway_env, 3),
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS or len(sys.argv) - 2 != COMMANDS[sys.argv[1]][1]:
        sys.exit(__doc__)
    COMMANDS[sys.argv[1]][0](*sys.argv[2:])
