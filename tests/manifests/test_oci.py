"""`make oci` (wasm-plugin-manifests/oci/build_layout.py): the OCI image layout of the built
filter, checked the way its consumers read it.

* The layout itself, per opencontainers/image-spec image-layout.md: `oci-layout`, `index.json`,
  and blobs/sha256/<hex> whose content hashes to <hex>; every descriptor's digest and size match
  its blob, and nothing in blobs/ is left unreferenced.
* The manifest as Istio's Wasm image fetcher reads it (istio/istio pkg/wasm/imagefetcher.go
  PrepareFetch), encoded in `istio_fetch` below and first held to the cases Istio's own code and
  issues show it accepting and refusing.
* What the script prints: the manifest digest (what Istio checks a WasmPlugin's `sha256`
  against for an oci:// url, pkg/wasm/cache.go) and the module's sha256.
* Same input, same digests; a second run into the same directory leaves no stale blob.
"""
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "wasm-plugin-manifests" / "oci" / "build_layout.py"
DOCKERFILE = ROOT / "wasm-plugin-manifests" / "oci" / "Dockerfile"
MODULE = ROOT / "target" / "kafka_mesh_filter.wasm"

# opencontainers/image-spec media-types.md, image-layout.md
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
# go-containerregistry pkg/v1/types (types.DockerManifestSchema2, DockerLayer, OCILayer) as used by
# istio/istio pkg/wasm/imagefetcher.go; the two Wasm types are solo-io/wasm spec/spec.md "Format".
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
WASM_CONTENT = "application/vnd.module.wasm.content.layer.v1+wasm"


def istio_fetch(manifest):
    """Which branch of Istio's fetcher takes `manifest`, and the layer it reads the module from:
    ("docker" | "compat" | "oci", layer descriptor), or (None, reasons).

    istio/istio pkg/wasm/imagefetcher.go, PrepareFetch's binaryFetcher, in its order:
      1. manifest.MediaType == DockerManifestSchema2 -> extractDockerImage: >= 1 layer, the LAST
         one must be DockerLayer (a tar.gz searched for plugin.wasm); failure here is final.
      2. extractOCIStandardImage ("compat"): >= 1 layer, the LAST one must be OCILayer.
      3. extractOCIArtifactImage ("oci"): exactly 2 layers ("number of layers must be 2 but got
         %d"), the first of media type application/vnd.module.wasm.content.layer.v1+wasm is the
         module, read raw (layer.Compressed()).
    Layers are the manifest's `layers` (go-containerregistry partial.FSLayers); the config is not
    one of them."""
    layers = manifest.get("layers", [])
    if manifest.get("mediaType") == DOCKER_MANIFEST:
        if layers and layers[-1]["mediaType"] == DOCKER_LAYER:
            return "docker", layers[-1]
        return None, ["docker: the last layer must be " + DOCKER_LAYER]
    reasons = []
    if layers and layers[-1]["mediaType"] == OCI_LAYER:
        return "compat", layers[-1]
    reasons.append("compat: the last layer must be " + OCI_LAYER)
    if len(layers) != 2:
        reasons.append(f"oci: number of layers must be 2 but got {len(layers)}")
    else:
        wasm = [layer for layer in layers if layer["mediaType"] == WASM_CONTENT]
        if wasm:
            return "oci", wasm[0]
        reasons.append("oci: could not find the layer of type " + WASM_CONTENT)
    return None, reasons


def _d(media_type):
    return {"mediaType": media_type, "digest": "sha256:" + "0" * 64, "size": 1}


def test_istio_fetch_model_matches_istios_own_cases():
    """The model accepts what Istio accepts and refuses what Istio refuses, so the assertion on our
    layout below can fail. Cases: istio/istio pkg/wasm/imagefetcher_test.go (docker image, OCI
    compat image, OCI artifact with a wasm and a config layer, an uncompressed-tar OCI image that
    fails both ways), engineerd/wasm-to-oci issue #45 (a single raw wasm layer: "number of layers
    must be 2 but got 1"), higress-group/higress issue #4014 (three layers: "... but got 3")."""
    docker = {"mediaType": DOCKER_MANIFEST, "layers": [_d(DOCKER_LAYER)]}
    assert istio_fetch(docker)[0] == "docker"
    assert istio_fetch({"mediaType": DOCKER_MANIFEST, "layers": [_d(OCI_LAYER)]})[0] is None
    assert istio_fetch({"mediaType": OCI_MANIFEST, "layers": [_d(DOCKER_LAYER), _d(OCI_LAYER)]})[0] == "compat"
    assert istio_fetch({"mediaType": OCI_MANIFEST, "layers": [_d(WASM_CONTENT), _d(WASM_CONFIG)]})[0] == "oci"
    assert istio_fetch({"mediaType": OCI_MANIFEST, "layers": [_d(WASM_CONFIG), _d(WASM_CONTENT)]})[0] == "oci"
    branch, reasons = istio_fetch({"mediaType": OCI_MANIFEST, "layers": [_d("application/vnd.oci.image.layer.v1.tar")]})
    assert branch is None and "oci: number of layers must be 2 but got 1" in reasons
    branch, reasons = istio_fetch({"mediaType": OCI_MANIFEST, "config": _d(WASM_CONFIG), "layers": [_d(WASM_CONTENT)]})
    assert branch is None and "oci: number of layers must be 2 but got 1" in reasons
    three = [_d(WASM_CONFIG), _d(WASM_CONTENT), _d("text/markdown")]
    assert istio_fetch({"mediaType": OCI_MANIFEST, "layers": three}) == (None, [
        "compat: the last layer must be " + OCI_LAYER, "oci: number of layers must be 2 but got 3"])
    assert istio_fetch({"mediaType": OCI_MANIFEST, "layers": [_d("a/b"), _d("a/b")]})[0] is None


# --- the layout --------------------------------------------------------------------------------

def module_bytes():
    if not MODULE.is_file():
        pytest.fail(f"{MODULE.relative_to(ROOT)} is missing: run `make wasm` first (make oci does)")
    return MODULE.read_bytes()


def run_builder(*args, check=True):
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


def printed(stdout):
    """The labelled values the script prints."""
    values = {}
    for label, key in (("manifest digest", "manifest"), ("module sha256", "module"), ("tag", "tag"),
                       ("OCI image layout", "layout")):
        m = re.search(rf"^{label}:\s+(\S+)$", stdout, re.M)
        assert m, f"no {label!r} line in:\n{stdout}"
        values[key] = m.group(1)
    m = re.search(r"^\s+sha256: ([0-9a-f]{64})$", stdout, re.M)
    assert m, f"no WasmPlugin `sha256:` line in:\n{stdout}"
    values["wasmplugin_sha256"] = m.group(1)
    return values


def blob(layout, digest):
    alg, hexpart = digest.split(":", 1)
    return (layout / "blobs" / alg / hexpart).read_bytes()


def check_layout(layout):
    """Problems with `layout` as an OCI image layout (image-layout.md, descriptor.md), as strings;
    [] when sound. Follows index.json -> manifest -> config and layers."""
    problems = []
    try:
        marker = json.loads((layout / "oci-layout").read_bytes())
        if marker.get("imageLayoutVersion") != "1.0.0":
            problems.append(f"oci-layout: imageLayoutVersion {marker.get('imageLayoutVersion')!r}")
        index = json.loads((layout / "index.json").read_bytes())
    except (OSError, ValueError) as e:
        return [f"unreadable layout: {e}"]
    if index.get("schemaVersion") != 2 or index.get("mediaType") != OCI_INDEX:
        problems.append("index.json: not an image index (schemaVersion 2, " + OCI_INDEX + ")")
    referenced = set()

    def verify(where, desc):
        digest = desc.get("digest", "")
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            problems.append(f"{where}: bad digest {digest!r}")
            return None
        referenced.add(digest)
        path = layout / "blobs" / "sha256" / digest[7:]
        if not path.is_file():
            problems.append(f"{where}: blob {digest} missing")
            return None
        data = path.read_bytes()
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            problems.append(f"{where}: blob {digest} has digest {actual}")
        if len(data) != desc.get("size"):
            problems.append(f"{where}: blob {digest} has size {len(data)}, descriptor says {desc.get('size')}")
        return data

    for i, mdesc in enumerate(index.get("manifests", [])):
        data = verify(f"index.json manifests[{i}]", mdesc)
        if data is None or mdesc.get("mediaType") != OCI_MANIFEST:
            continue
        manifest = json.loads(data)
        verify(f"manifest {mdesc['digest']} config", manifest.get("config", {}))
        for j, ldesc in enumerate(manifest.get("layers", [])):
            verify(f"manifest {mdesc['digest']} layers[{j}]", ldesc)
    for path in sorted((layout / "blobs").rglob("*")):
        if path.is_file() and f"{path.parent.name}:{path.name}" not in referenced:
            problems.append(f"unreferenced blob {path.relative_to(layout)}")
    return problems


def manifest_of(layout):
    index = json.loads((layout / "index.json").read_bytes())
    assert len(index["manifests"]) == 1, "crane push (cmd/crane/cmd/push.go) wants exactly one entry"
    desc = index["manifests"][0]
    return desc, json.loads(blob(layout, desc["digest"]))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    module_bytes()
    layout = tmp_path_factory.mktemp("oci") / "layout"
    proc = run_builder("--wasm", MODULE, "--out", layout)
    return layout, proc.stdout


def test_layout_is_a_sound_oci_image_layout(built):
    layout, _ = built
    assert sorted(p.name for p in layout.iterdir()) == ["blobs", "index.json", "oci-layout"]
    assert check_layout(layout) == []
    desc, manifest = manifest_of(layout)
    assert desc["mediaType"] == OCI_MANIFEST
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == OCI_MANIFEST


def test_check_layout_reports_a_corrupted_blob_and_a_stray_one(built, tmp_path):
    layout = tmp_path / "copy"
    shutil.copytree(built[0], layout)
    _, manifest = manifest_of(layout)
    layer = manifest["layers"][-1]
    path = layout / "blobs" / "sha256" / layer["digest"][7:]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    stray = layout / "blobs" / "sha256" / hashlib.sha256(b"stray").hexdigest()
    stray.write_bytes(b"stray")
    problems = check_layout(layout)
    assert any(f"blob {layer['digest']} has digest" in p for p in problems), problems
    assert any(stray.name in p and "unreferenced" in p for p in problems), problems
    path.write_bytes(path.read_bytes()[:-1])
    assert any(f"blob {layer['digest']} has size" in p for p in check_layout(layout))


def test_istio_reads_the_module_from_the_oci_variant_branch(built):
    layout, _ = built
    _, manifest = manifest_of(layout)
    branch, layer = istio_fetch(manifest)
    assert branch == "oci", layer
    # The compat branch is tried first and must not take it: its last layer is not a tar.gz.
    assert manifest["layers"][-1]["mediaType"] != OCI_LAYER
    assert manifest["config"]["mediaType"] == WASM_CONFIG
    assert blob(layout, layer["digest"]) == module_bytes()
    # Istio's isValidWasmBinary (pkg/wasm/cache.go): the bytes it extracts start with \0asm.
    assert blob(layout, layer["digest"])[:4] == b"\0asm"


def test_runtime_config_is_the_wasm_spec_config(built):
    """solo-io/wasm spec/spec.md: `type` (required; envoy_proxy for Envoy) and `abiVersions`."""
    layout, _ = built
    _, manifest = manifest_of(layout)
    config = json.loads(blob(layout, manifest["config"]["digest"]))
    assert config["type"] == "envoy_proxy"
    # proxy-wasm/spec abi-versions/v0.2.1: the module exports the marker proxy_abi_version_0_2_1.
    assert config["abiVersions"] == ["proxy_abi_version_0_2_1"]
    assert b"proxy_abi_version_0_2_1" in module_bytes()
    wasm_config_layers = [x for x in manifest["layers"] if x["mediaType"] == WASM_CONFIG]
    assert [x["digest"] for x in wasm_config_layers] == [manifest["config"]["digest"]]


def test_printed_digests(built):
    layout, stdout = built
    values = printed(stdout)
    desc, manifest = manifest_of(layout)
    assert values["manifest"] == desc["digest"]
    assert values["wasmplugin_sha256"] == desc["digest"][7:]
    assert values["module"] == hashlib.sha256(module_bytes()).hexdigest()
    assert values["module"] == istio_fetch(manifest)[1]["digest"][7:]
    assert values["manifest"] != "sha256:" + values["module"]
    assert f"oci://REGISTRY/REPO@{desc['digest']}" in stdout
    assert "MANIFEST digest" in stdout and "cache.go" in stdout


def test_tag_defaults_to_the_crate_version(built):
    layout, stdout = built
    cargo = tomllib.loads((ROOT / "filter" / "wasm" / "Cargo.toml").read_text())["package"]
    assert cargo["version"] == {"workspace": True}
    version = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    desc, manifest = manifest_of(layout)
    assert desc["annotations"][REF_NAME] == version
    assert printed(stdout)["tag"] == version
    assert manifest["annotations"]["org.opencontainers.image.version"] == version


def test_tag_option_and_invalid_tags(tmp_path):
    module_bytes()
    run_builder("--wasm", MODULE, "--out", tmp_path / "t", "--tag", "v1.2.3-rc.1")
    assert manifest_of(tmp_path / "t")[0]["annotations"][REF_NAME] == "v1.2.3-rc.1"
    for bad in ("-x", "a/b", "x" * 129, "a:b"):
        proc = run_builder("--wasm", MODULE, "--out", tmp_path / "bad", f"--tag={bad}", check=False)
        assert proc.returncode != 0 and "not a valid registry tag" in proc.stderr, bad
        assert not (tmp_path / "bad").exists()


def test_same_input_same_digests(built, tmp_path):
    layout, stdout = built
    run_builder("--wasm", MODULE, "--out", tmp_path / "again")
    assert (tmp_path / "again" / "index.json").read_bytes() == (layout / "index.json").read_bytes()
    names = lambda d: sorted(p.name for p in (d / "blobs" / "sha256").iterdir())
    assert names(tmp_path / "again") == names(layout)
    again = run_builder("--wasm", MODULE, "--out", layout)  # into the same directory
    assert printed(again.stdout)["manifest"] == printed(stdout)["manifest"]
    assert "removed stale" not in again.stdout and check_layout(layout) == []


def test_a_second_run_removes_the_first_runs_blobs(tmp_path):
    """Build from a different module (ours plus a custom section, still valid Wasm), then from
    ours into the same directory: none of the first run's own blobs may remain."""
    module = module_bytes()
    name = b"kmf-test"
    payload = bytes([len(name)]) + name + b"stale"
    other = tmp_path / "other.wasm"
    other.write_bytes(module + b"\x00" + bytes([len(payload)]) + payload)  # custom section, id 0
    layout = tmp_path / "layout"
    run_builder("--wasm", other, "--out", layout)
    first = {p.name for p in (layout / "blobs" / "sha256").iterdir()}
    (layout / "blobs" / "sha512").mkdir()
    (layout / "blobs" / "sha512" / ("0" * 128)).write_bytes(b"old")
    second = run_builder("--wasm", MODULE, "--out", layout)
    now = {p.name for p in (layout / "blobs" / "sha256").iterdir()}
    desc, manifest = manifest_of(layout)
    expected = {desc["digest"][7:], manifest["config"]["digest"][7:]} | {x["digest"][7:] for x in manifest["layers"]}
    assert now == expected
    assert hashlib.sha256(other.read_bytes()).hexdigest() in first - now
    assert not (layout / "blobs" / "sha512").exists()
    assert "removed stale blobs: 3" in second.stdout  # old module, old manifest, the sha512 one
    assert check_layout(layout) == []


def test_refuses_a_directory_that_is_not_a_layout(tmp_path):
    module_bytes()
    (tmp_path / "keep.txt").write_text("not ours")
    proc = run_builder("--wasm", MODULE, "--out", tmp_path, check=False)
    assert proc.returncode != 0 and "not an OCI image layout" in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_refuses_what_is_not_a_wasm_module(tmp_path):
    bad = tmp_path / "x.wasm"
    bad.write_bytes(b"#!/bin/sh\necho not wasm\n")
    proc = run_builder("--wasm", bad, "--out", tmp_path / "o", check=False)
    assert proc.returncode == 1 and "not a WebAssembly binary" in proc.stderr
    proc = run_builder("--wasm", tmp_path / "missing.wasm", "--out", tmp_path / "o", check=False)
    assert proc.returncode == 1 and "make wasm" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_dockerfile_builds_a_compat_image():
    """spec/spec-compat.md: one layer holding plugin.wasm, so one COPY and nothing else that makes
    a layer; Istio looks for the base name plugin.wasm in the last layer (extractWasmPluginBinary).
    The build context is target/, where `make wasm` puts kafka_mesh_filter.wasm."""
    lines = [ln.split() for ln in DOCKERFILE.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines == [["FROM", "scratch"], ["COPY", "kafka_mesh_filter.wasm", "/plugin.wasm"]]
    assert MODULE.name == "kafka_mesh_filter.wasm"
