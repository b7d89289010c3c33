#!/usr/bin/env python3
"""Write the built filter as an OCI image layout (`make oci`): no docker, standard library only.

    python3 wasm-plugin-manifests/oci/build_layout.py [--wasm PATH] [--out DIR] [--tag TAG]

The image is the Wasm artifact "oci" variant of the Wasm image spec that Istio's fetcher reads
(solo-io/wasm spec/spec.md "Format"; istio/istio pkg/wasm/imagefetcher.go extractOCIArtifactImage):

    manifest  application/vnd.oci.image.manifest.v1+json, schemaVersion 2
      config  application/vnd.module.wasm.config.v1+json            runtime-config.json
      layers  application/vnd.module.wasm.config.v1+json            runtime-config.json
              application/vnd.module.wasm.content.layer.v1+wasm     plugin.wasm: the module, raw

so the plugin.wasm layer blob is byte-identical to the module. Why two layers: Istio's
extractOCIArtifactImage rejects any other count ("number of layers must be 2 but got %d"), so a
single raw-wasm layer (what `oras push` of the .wasm alone gives) is NOT accepted; see
engineerd/wasm-to-oci issue #45. The runtime config is both the manifest config and the first
layer, as solo-io/wasm's own pusher does it (tools/wasme/pkg/push/push.go: the config descriptor
goes into `files` and into oras.WithConfig). The docker-built image of ./Dockerfile is the other,
"compat", variant (spec/spec-compat.md); both are accepted, the digests differ.

Which digest goes where (istio/istio pkg/wasm/cache.go getOrFetch, getEntry):
  * For an oci:// url Istio compares the WasmPlugin `sha256` field with the image MANIFEST digest
    (PrepareFetch returns `img.Digest().Hex`, imagefetcher.go), not with the module's sha256.
  * A `@sha256:` digest in the url is that same manifest digest: go-containerregistry fetches the
    manifest by it, and with no `sha256` field cache.go uses it as the checksum.
  * For http(s):// and file:// urls the `sha256` field is the sha256 of the .wasm itself.

Layout (opencontainers/image-spec image-layout.md): `oci-layout` {"imageLayoutVersion": "1.0.0"},
`index.json` (an image index), `blobs/sha256/<hex>` named by the sha256 of their content. The tag
is the `org.opencontainers.image.ref.name` annotation of the manifest's descriptor in index.json
(image-layout.md "index.json file", annotations.md), which is what `oras cp --from-oci-layout
DIR:TAG` and `skopeo copy oci:DIR:TAG` resolve. index.json holds exactly one manifest, because
`crane push DIR` refuses a layout with more (go-containerregistry cmd/crane/cmd/push.go).

Deterministic: JSON is written with a fixed key order and separators and no timestamps, so the
same module and tag give the same digests. Blobs a previous run left in --out are removed.
"""
import argparse
import hashlib
import json
import os
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WASM = ROOT / "target" / "kafka_mesh_filter.wasm"
DEFAULT_OUT = ROOT / "target" / "oci"

# opencontainers/image-spec media-types.md, manifest.md, image-index.md, image-layout.md
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE_LAYOUT_VERSION = "1.0.0"
# solo-io/wasm spec/spec.md "Format"; the same strings in istio/istio pkg/wasm/imagefetcher.go
# (wasmLayerMediaType) and pkg/wasm/imagefetcher_test.go (the config layer).
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
WASM_CONTENT = "application/vnd.module.wasm.content.layer.v1+wasm"
# opencontainers/image-spec annotations.md
REF_NAME = "org.opencontainers.image.ref.name"
TITLE = "org.opencontainers.image.title"
VERSION = "org.opencontainers.image.version"
# solo-io/wasm tools/wasme/pkg/push/push.go ManifestAnnotations
RUNTIME_TYPE = "module.wasm.runtime/type"
RUNTIME_ABI = "module.wasm.runtime/abi_version"
# istio/istio pkg/wasm/cache.go isValidWasmBinary: the 4-byte magic; the version word follows.
WASM_MAGIC = b"\x00asm"
# A registry tag (opencontainers/distribution-spec spec.md "Pulling manifests": <reference> as a tag
# MUST match this); also a valid
# ref.name under image-spec annotations.md.
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")


def canonical_json(obj) -> bytes:
    """Key order is the order the dicts are built in below; no spaces, no trailing newline."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode()


def descriptor(media_type: str, blob: bytes, annotations=None) -> dict:
    """opencontainers/image-spec descriptor.md: mediaType, digest, size (+ annotations)."""
    d = {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(), "size": len(blob)}
    if annotations:
        d["annotations"] = annotations
    return d


def workspace_version(root: Path = ROOT) -> str:
    """The filter crate's version: filter/wasm/Cargo.toml says `version.workspace = true`, so the
    value is [workspace.package] version of the root Cargo.toml."""
    pkg = tomllib.loads((root / "filter" / "wasm" / "Cargo.toml").read_text())["package"]
    version = pkg["version"]
    if isinstance(version, dict) and version.get("workspace"):
        version = tomllib.loads((root / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    return version


def _uleb(data: bytes, pos: int):
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated LEB128")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, pos


def wasm_exports(module: bytes) -> list:
    """Export names of a binary module (WebAssembly/spec document/core/binary/modules.rst: the
    preamble is magic + version, sections are id byte + u32 LEB128 size, the export section has
    id 7 and holds vec(export), an export being name (vec of bytes), kind byte, index)."""
    if module[:4] != WASM_MAGIC or len(module) < 8:
        raise ValueError("not a WebAssembly binary (no \\0asm magic)")
    names, pos = [], 8
    while pos < len(module):
        section_id = module[pos]
        size, pos = _uleb(module, pos + 1)
        end = pos + size
        if end > len(module):
            raise ValueError("truncated section")
        if section_id == 7:
            count, p = _uleb(module, pos)
            for _ in range(count):
                n, p = _uleb(module, p)
                names.append(module[p:p + n].decode("utf-8"))
                p += n + 1  # the name, then the export kind byte
                _, p = _uleb(module, p)  # the index
        pos = end
    return names


def proxy_abi_versions(module: bytes) -> list:
    """The proxy-wasm ABI versions the module declares: Envoy picks the ABI by the exported marker
    function `proxy_abi_version_X_Y_Z` (proxy-wasm/spec abi-versions/v0.2.1/README.md)."""
    return sorted(n for n in wasm_exports(module) if n.startswith("proxy_abi_version_"))


def build_image(module: bytes, tag: str, version: str) -> tuple:
    """(blobs by digest, manifest descriptor for index.json, index.json bytes)."""
    abis = proxy_abi_versions(module)
    # solo-io/wasm spec/spec.md: `type` (required) and `abiVersions`; the JSON spelling is the one
    # of tools/wasme/pkg/config/runtime.proto's example. No root_ids: filter/wasm/src/lib.rs makes
    # the same root context whatever the root id (the WasmPlugin's pluginName) is.
    runtime_config = canonical_json({"type": "envoy_proxy", "abiVersions": abis})
    config = descriptor(WASM_CONFIG, runtime_config)
    wasm_layer = descriptor(WASM_CONTENT, module, {TITLE: "plugin.wasm"})
    layers = [descriptor(WASM_CONFIG, runtime_config, {TITLE: "runtime-config.json"}), wasm_layer]
    manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": layers,
        "annotations": {
            RUNTIME_TYPE: "envoy_proxy",
            RUNTIME_ABI: ",".join(abis),
            TITLE: "kafka-mesh-filter",
            VERSION: version,
        },
    })
    manifest_desc = descriptor(OCI_MANIFEST, manifest, {REF_NAME: tag})
    index = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [manifest_desc]})
    blobs = {d["digest"]: b for d, b in ((config, runtime_config), (wasm_layer, module), (manifest_desc, manifest))}
    return blobs, manifest_desc, index


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_layout(out: Path, blobs: dict, index: bytes) -> list:
    """Write the layout into `out`, removing whatever blobs a previous run left; returns the
    removed blob paths. Refuses a non-empty directory that is not an OCI layout."""
    if out.exists() and any(out.iterdir()) and not (out / "oci-layout").is_file():
        raise SystemExit(f"{out} is not empty and is not an OCI image layout (no oci-layout file); "
                         "refusing to write into it")
    blob_dir = out / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    for digest, data in blobs.items():
        path = blob_dir / digest.split(":", 1)[1]
        if not path.is_file() or path.read_bytes() != data:
            _write(path, data)
    removed = []
    for path in sorted((out / "blobs").rglob("*"), reverse=True):
        keep = path.parent == blob_dir and f"sha256:{path.name}" in blobs
        if path == blob_dir or keep:
            continue
        if path.is_dir():
            path.rmdir()  # only other algorithms' directories, emptied above (reverse order)
        else:
            path.unlink()
            removed.append(path)
    _write(out / "oci-layout", canonical_json({"imageLayoutVersion": IMAGE_LAYOUT_VERSION}))
    _write(out / "index.json", index)
    return removed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wasm", type=Path, default=DEFAULT_WASM, help="the module (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="layout directory (default: %(default)s)")
    ap.add_argument("--tag", help="tag in index.json (default: the crate version from Cargo.toml)")
    args = ap.parse_args(argv)

    version = workspace_version()
    tag = args.tag or version
    if not TAG_RE.fullmatch(tag):
        ap.error(f"--tag {tag!r} is not a valid registry tag ([a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}})")
    if not args.wasm.is_file():
        print(f"error: {args.wasm} does not exist; run `make wasm` first", file=sys.stderr)
        return 1
    module = args.wasm.read_bytes()
    try:
        abis = proxy_abi_versions(module)
    except ValueError as e:
        # Istio would refuse it too (pkg/wasm/cache.go isValidWasmBinary).
        print(f"error: {args.wasm}: {e}", file=sys.stderr)
        return 1
    if not abis:
        print(f"warning: {args.wasm} exports no proxy_abi_version_* marker; is it a proxy-wasm module?",
              file=sys.stderr)

    blobs, manifest_desc, index = build_image(module, tag, version)
    removed = write_layout(args.out, blobs, index)
    digest = manifest_desc["digest"]
    module_hex = hashlib.sha256(module).hexdigest()
    print(f"OCI image layout: {args.out}")
    print(f"tag:              {tag}")
    if removed:
        print(f"removed stale blobs: {len(removed)}")
    print(f"manifest digest:  {digest}")
    print(f"module sha256:    {module_hex}")
    print()
    print("After pushing the layout unchanged (oras cp / crane push / skopeo copy --preserve-digests),")
    print("the registry reports the manifest digest above for REGISTRY/REPO:" + tag + ". In the WasmPlugin:")
    print(f"  url: oci://REGISTRY/REPO:{tag}      or  url: oci://REGISTRY/REPO@{digest}")
    print(f"  sha256: {digest.split(':', 1)[1]}")
    print("  (for oci:// urls Istio checks `sha256` against the image MANIFEST digest, not the module:")
    print("   istio/istio pkg/wasm/cache.go; the module sha256 is the `sha256` for http(s):// or file://")
    print("   urls, and is the digest of the plugin.wasm layer, which holds the module unchanged)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
