"""Real registry clients against the real server: skopeo (containers/image) and dockerd.

Everything goes over plain HTTP on loopback: skopeo with --*-tls-verify=false, dockerd because
it trusts 127.0.0.0/8 registries as insecure by default. No test needs outside network: images
come from `tests.images.make_image` (OCI layouts), `docker load` of a tarball made here, or a
`FROM scratch` build.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.components import RegistryProcess, require_tool
from tests.docker_images import DockerCli, docker_archive, push_digest
from tests.images import Image, make_image
from tests.skopeo import MB, Skopeo, layout_blobs, unique

# In `skopeo --debug` output: a cross-repository mount request, and the PUT that ends an upload.
_MOUNT = re.compile(r"POST \S+/blobs/uploads/\?from=\S*mount=sha256%3A([0-9a-f]{64})")
_UPLOAD_PUT = re.compile(r"PUT \S+/blobs/uploads/\S+\?digest=sha256%3A([0-9a-f]{64})")
# Four layers of a few MB (skopeo streams each in one PATCH, then PUT): quick, yet not trivial.
LAYER_SIZES = [3 * MB, 2 * MB, 1 * MB, 512 * 1024]


# --- helpers --------------------------------------------------------------------------------


def registry_stats(registry: RegistryProcess) -> dict[str, int]:
    with urllib.request.urlopen(f"{registry.url}/_cache/stats", timeout=30) as response:
        document = json.loads(response.read())
    return {key: value for key, value in document.items() if isinstance(value, int)}


def tagged_manifest(layout: Path, tag: str) -> dict[str, object]:
    """The index.json descriptor of `tag` in an OCI layout."""
    index = json.loads((layout / "index.json").read_text())
    found = [
        entry
        for entry in index["manifests"]
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    assert len(found) == 1, index
    entry = found[0]
    assert isinstance(entry, dict)
    return entry


def manifest_bytes(image: Image) -> bytes:
    return (image.layout / "blobs" / "sha256" / image.manifest_digest.split(":")[1]).read_bytes()


def store_blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = sha256_of(data)
    (layout / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    return {"digest": digest, "size": len(data)}


@dataclass(frozen=True)
class MultiArchImage:
    index_digest: str
    configs: dict[str, str]  # architecture -> config digest (= docker image ID)
    referenced: frozenset[str]  # every blob the index reaches, the index included


def make_multi_arch_image(layout: Path, arches: list[str], tag: str) -> MultiArchImage:
    """An OCI layout whose `tag` is an image index of one manifest per architecture, all
    sharing the same layers."""
    base = make_image(layout, [256 * 1024, 128 * 1024], tag=f"{tag}-base")
    manifest = json.loads(manifest_bytes(base))
    config = json.loads(layout_blobs(layout)[base.blob_digests[-1]])
    referenced = {str(layer["digest"]) for layer in manifest["layers"]}
    entries, configs = [], {}
    for arch in arches:
        config_desc = store_blob(layout, json.dumps({**config, "architecture": arch}).encode())
        configs[arch] = str(config_desc["digest"])
        body = json.dumps({**manifest, "config": {**manifest["config"], **config_desc}}).encode()
        manifest_desc = store_blob(layout, body)
        referenced |= {configs[arch], str(manifest_desc["digest"])}
        platform = {"architecture": arch, "os": "linux"}
        entries.append({"mediaType": manifest["mediaType"], **manifest_desc, "platform": platform})
    index_type = "application/vnd.oci.image.index.v1+json"
    index = {"schemaVersion": 2, "mediaType": index_type, "manifests": entries}
    index_desc = store_blob(layout, json.dumps(index).encode())
    index_digest = str(index_desc["digest"])
    annotations = {"org.opencontainers.image.ref.name": tag}
    top = {"mediaType": index_type, **index_desc, "annotations": annotations}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return MultiArchImage(index_digest, configs, frozenset(referenced | {index_digest}))


def sha256_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@pytest.fixture
def skopeo_cli(skopeo: str) -> Skopeo:
    return Skopeo(skopeo)


@pytest.fixture
def docker(docker_daemon: None) -> Iterator[DockerCli]:
    cli = DockerCli(require_tool("docker"))
    yield cli
    cli.cleanup()


@pytest.fixture
def docker_arch(docker: DockerCli) -> str:
    return docker.run("version", "--format", "{{.Server.Arch}}").stdout.strip() or "amd64"


# --- skopeo ---------------------------------------------------------------------------------


@pytest.mark.skopeo
def test_skopeo_round_trip_is_byte_identical(
    registry: RegistryProcess, skopeo_cli: Skopeo, tmp_path: Path
) -> None:
    image = make_image(tmp_path / "src", LAYER_SIZES, tag="v1")
    repository = f"{registry.address}/{unique('roundtrip')}/app"

    pushed = skopeo_cli.push(image, f"{repository}:v1")
    assert pushed == image.manifest_digest

    stats = registry_stats(registry)
    assert stats["blobs_pushed"] == len(LAYER_SIZES) + 1  # the layers and the config
    assert stats["manifests_pushed"] == 1
    source_blobs = layout_blobs(image.layout)
    assert stats["bytes_in"] == sum(len(data) for data in source_blobs.values())

    raw = skopeo_cli.inspect_raw(f"{repository}:v1").stdout.encode()
    assert raw == manifest_bytes(image)
    assert skopeo_cli.inspect_raw(f"{repository}@{image.manifest_digest}").stdout.encode() == raw

    out = tmp_path / "out"
    skopeo_cli.pull(f"{repository}:v1", out, "v1")
    assert layout_blobs(out) == source_blobs
    descriptor = tagged_manifest(out, "v1")
    assert descriptor["digest"] == image.manifest_digest
    assert descriptor["size"] == len(raw)


@pytest.mark.skopeo
def test_skopeo_list_tags(registry: RegistryProcess, skopeo_cli: Skopeo, tmp_path: Path) -> None:
    image = make_image(tmp_path / "src", [256 * 1024, 128 * 1024], tag="v1")
    repository = f"{registry.address}/{unique('tags')}/app"
    for tag in ("v1", "v2", "latest"):
        assert skopeo_cli.push(image, f"{repository}:{tag}") == image.manifest_digest

    assert skopeo_cli.list_tags(repository) == ["latest", "v1", "v2"]
    # Second and third pushes found every blob already there.
    assert registry_stats(registry)["blobs_pushed"] == 3


@pytest.mark.skopeo
def test_skopeo_copy_between_repositories_mounts_the_layers(
    registry: RegistryProcess, skopeo_cli: Skopeo, tmp_path: Path
) -> None:
    image = make_image(tmp_path / "src", LAYER_SIZES, tag="v1")
    source = f"{registry.address}/{unique('origin')}/app"
    mirror = f"{registry.address}/{unique('mirror')}/app"
    skopeo_cli.push(image, f"{source}:v1")
    before = registry_stats(registry)

    copied = skopeo_cli.run(
        "--debug",  # on failure, shows which locations skopeo tried to reuse blobs from
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        f"docker://{source}:v1",
        f"docker://{mirror}:copy",
    )

    after = registry_stats(registry)
    sizes = {digest: len(data) for digest, data in layout_blobs(image.layout).items()}
    # skopeo only mounts blobs its blob-info cache (a shared boltdb under
    # /var/lib/containers/cache whose errors containers/image silently drops) knows a location
    # for; a layer it knows none for is downloaded and uploaded again. Under load that happens
    # to a layer or two in ~1 of 25 runs, so the registry is held to what skopeo asked of it.
    mounts = {f"sha256:{hex_}" for hex_ in _MOUNT.findall(copied.stderr)}
    uploads = {f"sha256:{hex_}" for hex_ in _UPLOAD_PUT.findall(copied.stderr)}
    context = (
        f"mount requests {sorted(mounts)}\nuploads {sorted(uploads)}\n"
        f"stats before {before}\nafter {after}\nskopeo:\n{copied.stderr}"
    )
    assert mounts, f"skopeo requested no cross-repository mount at all\n{context}"
    assert mounts <= set(image.blob_digests), context
    # Every mount the registry was asked for succeeded: none of those blobs was uploaded after.
    assert not mounts & uploads, context
    assert mounts | uploads == set(image.blob_digests), context
    # The registry received exactly the blobs skopeo uploaded (skopeo 1.9 always re-uploads the
    # config) plus the manifest, and counted nothing for the mounted layers.
    uploaded_bytes = sum(sizes[digest] for digest in uploads)
    assert after["bytes_in"] - before["bytes_in"] == uploaded_bytes + len(manifest_bytes(image)), (
        context
    )
    assert after["blobs_pushed"] - before["blobs_pushed"] == len(uploads), context
    assert after["manifests_pushed"] - before["manifests_pushed"] == 1, context

    raw = skopeo_cli.inspect_raw(f"{mirror}:copy").stdout.encode()
    assert raw == manifest_bytes(image)
    out = tmp_path / "out"
    skopeo_cli.pull(f"{mirror}:copy", out, "copy")
    assert layout_blobs(out) == layout_blobs(image.layout)
    assert tagged_manifest(out, "copy")["digest"] == image.manifest_digest


@pytest.mark.skopeo
def test_skopeo_delete_removes_the_manifest(
    registry: RegistryProcess, skopeo_cli: Skopeo, tmp_path: Path
) -> None:
    image = make_image(tmp_path / "src", [512 * 1024, 256 * 1024], tag="v1")
    doomed = f"{registry.address}/{unique('doomed')}/app"
    kept = f"{registry.address}/{unique('kept')}/app"
    skopeo_cli.push(image, f"{doomed}:v1")
    skopeo_cli.push(image, f"{kept}:v1")

    # skopeo resolves the tag, then sends DELETE /v2/<name>/manifests/<digest>.
    skopeo_cli.run("delete", "--tls-verify=false", f"docker://{doomed}:v1")

    for reference in (f"{doomed}:v1", f"{doomed}@{image.manifest_digest}"):
        gone = skopeo_cli.inspect_raw(reference, check=False)
        assert gone.returncode != 0, gone.stdout
        assert "manifest unknown" in gone.stderr, gone.stderr
    assert skopeo_cli.list_tags(doomed) == []
    # The same manifest in another repository is untouched.
    assert skopeo_cli.inspect_raw(f"{kept}:v1").stdout.encode() == manifest_bytes(image)
    # Deleting again: the registry says it no longer has it.
    again = skopeo_cli.run("delete", "--tls-verify=false", f"docker://{doomed}:v1", check=False)
    assert again.returncode != 0


# --- docker ---------------------------------------------------------------------------------


@pytest.mark.docker
def test_docker_push_rmi_pull_round_trip(
    registry: RegistryProcess, docker: DockerCli, docker_arch: str
) -> None:
    ref = f"{registry.address}/{unique('docker')}/app:v1"
    image = docker_archive(ref, [2 * MB, 1 * MB, 256 * 1024], arch=docker_arch)
    docker.load(image)
    loaded = docker.inspect(ref)
    assert loaded is not None
    assert loaded["Id"] == image.image_id

    pushed = docker.run("push", ref).stdout
    digest = push_digest(pushed)
    assert pushed.count(": Pushed") == len(image.diff_ids), pushed
    stats = registry_stats(registry)
    assert stats["blobs_pushed"] == len(image.diff_ids) + 1  # the layers and the config
    assert stats["manifests_pushed"] == 1

    docker.run("rmi", ref)
    assert docker.inspect(ref) is None
    assert docker.inspect(image.image_id) is None

    pulled_output = docker.run("pull", ref).stdout
    assert f"Digest: {digest}" in pulled_output, pulled_output
    pulled = docker.inspect(ref)
    assert pulled is not None
    assert pulled["Id"] == image.image_id
    rootfs = pulled["RootFS"]
    assert isinstance(rootfs, dict)
    assert rootfs["Layers"] == list(image.diff_ids)
    repo_digests = pulled["RepoDigests"]
    assert isinstance(repo_digests, list)
    assert f"{ref.rsplit(':', 1)[0]}@{digest}" in repo_digests

    # A second push uploads nothing: every layer "already exists", the manifest is the same.
    again = docker.run("push", ref).stdout
    assert again.count(": Layer already exists") == len(image.diff_ids), again
    assert ": Pushed" not in again, again
    assert push_digest(again) == digest
    assert registry_stats(registry)["blobs_pushed"] == stats["blobs_pushed"]


@pytest.mark.docker
def test_docker_push_to_another_repository_mounts_the_layers(
    registry: RegistryProcess, docker: DockerCli, docker_arch: str
) -> None:
    first_repo = unique("first")
    ref = f"{registry.address}/{first_repo}/app:v1"
    image = docker_archive(ref, [1 * MB, 512 * 1024], arch=docker_arch)
    docker.load(image)
    digest = push_digest(docker.run("push", ref).stdout)
    before = registry_stats(registry)

    second = f"{registry.address}/{unique('second')}/app:v2"
    docker.track(second)
    docker.run("tag", ref, second)
    output = docker.run("push", second).stdout

    assert output.count(f": Mounted from {first_repo}/app") == len(image.diff_ids), output
    assert push_digest(output) == digest
    after = registry_stats(registry)
    # Nothing as large as the smaller (512 KiB of random data) layer was uploaded again.
    assert after["bytes_in"] - before["bytes_in"] < 512 * 1024

    docker.run("rmi", ref, second)
    assert docker.inspect(image.image_id) is None
    docker.run("pull", second)
    pulled = docker.inspect(second)
    assert pulled is not None
    assert pulled["Id"] == image.image_id


@pytest.mark.docker
def test_docker_build_from_scratch_push_pull(
    registry: RegistryProcess, docker: DockerCli, tmp_path: Path
) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for name, size in (("a.bin", 512 * 1024), ("b.bin", 256 * 1024)):
        (context / name).write_bytes(secrets.token_bytes(size))
    (context / "Dockerfile").write_text("FROM scratch\nCOPY a.bin /a.bin\nCOPY b.bin /b.bin\n")
    ref = f"{registry.address}/{unique('built')}/app:v1"
    docker.track(ref)

    docker.run("build", "--tag", ref, str(context))
    built = docker.inspect(ref)
    assert built is not None
    image_id = built["Id"]
    assert isinstance(image_id, str)
    docker.track(ref, image_id)
    layers = built["RootFS"]
    assert isinstance(layers, dict)
    assert len(layers["Layers"]) == 2

    digest = push_digest(docker.run("push", ref).stdout)
    docker.run("rmi", ref)
    assert docker.inspect(image_id) is None
    docker.run("pull", ref)

    pulled = docker.inspect(ref)
    assert pulled is not None
    assert pulled["Id"] == image_id
    assert pulled["RootFS"] == built["RootFS"]
    assert f"{ref.rsplit(':', 1)[0]}@{digest}" in str(pulled["RepoDigests"])


# --- skopeo and docker on the same registry ------------------------------------------------


@pytest.mark.docker
@pytest.mark.skopeo
def test_docker_pulls_an_oci_image_pushed_by_skopeo(
    registry: RegistryProcess, skopeo_cli: Skopeo, docker: DockerCli, tmp_path: Path
) -> None:
    image = make_image(tmp_path / "src", [1 * MB, 512 * 1024], tag="v1")
    ref = f"{registry.address}/{unique('oci')}/app:v1"
    config_digest = image.blob_digests[-1]
    docker.track(ref, config_digest)
    skopeo_cli.push(image, ref)

    docker.run("pull", ref)
    pulled = docker.inspect(ref)
    assert pulled is not None
    assert pulled["Id"] == config_digest
    config = json.loads(layout_blobs(image.layout)[config_digest])
    rootfs = pulled["RootFS"]
    assert isinstance(rootfs, dict)
    assert rootfs["Layers"] == config["rootfs"]["diff_ids"]
    assert f"{ref.rsplit(':', 1)[0]}@{image.manifest_digest}" in str(pulled["RepoDigests"])


@pytest.mark.docker
@pytest.mark.skopeo
def test_skopeo_reads_an_image_pushed_by_docker(
    registry: RegistryProcess,
    skopeo_cli: Skopeo,
    docker: DockerCli,
    docker_arch: str,
    tmp_path: Path,
) -> None:
    ref = f"{registry.address}/{unique('fromdocker')}/app:v1"
    image = docker_archive(ref, [1 * MB, 256 * 1024], arch=docker_arch)
    docker.load(image)
    digest = push_digest(docker.run("push", ref).stdout)

    # dir: keeps the Docker v2 schema 2 manifest exactly as served.
    out = tmp_path / "dir"
    skopeo_cli.run("copy", "--src-tls-verify=false", f"docker://{ref}", f"dir:{out}")
    manifest = (out / "manifest.json").read_bytes()
    assert sha256_of(manifest) == digest
    assert skopeo_cli.inspect_raw(ref).stdout.encode() == manifest
    document = json.loads(manifest)
    assert document["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert document["config"]["digest"] == image.image_id
    for descriptor in [document["config"], *document["layers"]]:
        blob = (out / descriptor["digest"].split(":")[1]).read_bytes()
        assert sha256_of(blob) == descriptor["digest"]
        assert len(blob) == descriptor["size"]


@pytest.mark.docker
@pytest.mark.skopeo
def test_multi_arch_index_skopeo_all_and_docker_platform_pull(
    registry: RegistryProcess,
    skopeo_cli: Skopeo,
    docker: DockerCli,
    docker_arch: str,
    tmp_path: Path,
) -> None:
    other_arch = "arm64" if docker_arch != "arm64" else "amd64"
    layout = tmp_path / "multi"
    image = make_multi_arch_image(layout, [docker_arch, other_arch], "v1")
    index_digest, configs = image.index_digest, image.configs
    ref = f"{registry.address}/{unique('multi')}/app:v1"
    docker.track(ref, configs[docker_arch])

    # --all copies the index and both per-architecture manifests (pushed by digest, untagged).
    skopeo_cli.run(
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        f"oci:{layout}:v1",
        f"docker://{ref}",
    )
    raw = skopeo_cli.inspect_raw(ref).stdout.encode()
    assert sha256_of(raw) == index_digest
    assert skopeo_cli.list_tags(ref.rsplit(":", 1)[0]) == ["v1"]

    out = tmp_path / "out"
    skopeo_cli.run(
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        f"docker://{ref}",
        f"oci:{out}:v1",
    )
    assert tagged_manifest(out, "v1")["digest"] == index_digest
    source_blobs = layout_blobs(layout)
    assert layout_blobs(out) == {digest: source_blobs[digest] for digest in image.referenced}

    # dockerd picks its own platform's manifest out of the index.
    docker.run("pull", ref)
    pulled = docker.inspect(ref)
    assert pulled is not None
    assert pulled["Id"] == configs[docker_arch]
    assert pulled["Architecture"] == docker_arch
    assert f"{ref.rsplit(':', 1)[0]}@{index_digest}" in str(pulled["RepoDigests"])
