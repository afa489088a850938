"""Images for a real dockerd with no network, and a docker CLI wrapper that cleans up after itself.

`docker_archive` writes the tarball `docker save` writes (and `docker load` reads): multi-layer,
deterministic (image ID = sha256 of the config we write), and independent of any builder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

TIMEOUT_SECONDS = 300
_PUSH_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64}) size: \d+")


@dataclass(frozen=True)
class DockerArchiveImage:
    ref: str
    image_id: str  # sha256 of the config JSON: what `docker image inspect` calls Id
    diff_ids: tuple[str, ...]  # uncompressed layer digests: RootFS.Layers
    archive: bytes


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    archive.addfile(info, io.BytesIO(data))


def docker_archive(ref: str, layer_sizes: list[int], arch: str = "amd64") -> DockerArchiveImage:
    """A `docker save` tarball of one image tagged `ref`, one random file per layer."""
    out = io.BytesIO()
    layer_paths: list[str] = []
    diff_ids: list[str] = []
    with tarfile.open(fileobj=out, mode="w") as archive:
        for number, size in enumerate(layer_sizes):
            layer = io.BytesIO()
            with tarfile.open(fileobj=layer, mode="w") as files:
                _add(files, f"data/layer-{number}.bin", os.urandom(size))
            raw = layer.getvalue()
            hex_digest = hashlib.sha256(raw).hexdigest()
            _add(archive, f"{hex_digest}/layer.tar", raw)
            layer_paths.append(f"{hex_digest}/layer.tar")
            diff_ids.append(f"sha256:{hex_digest}")
        config = json.dumps(
            {
                "architecture": arch,
                "os": "linux",
                "config": {"Cmd": ["/data/layer-0.bin"]},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
                "history": [{"created_by": f"test layer {n}"} for n in range(len(diff_ids))],
            }
        ).encode()
        config_hex = hashlib.sha256(config).hexdigest()
        _add(archive, f"{config_hex}.json", config)
        manifest = [{"Config": f"{config_hex}.json", "RepoTags": [ref], "Layers": layer_paths}]
        _add(archive, "manifest.json", json.dumps(manifest).encode())
    return DockerArchiveImage(ref, f"sha256:{config_hex}", tuple(diff_ids), out.getvalue())


def push_digest(push_output: str) -> str:
    """The manifest digest `docker push` reports on its last line."""
    found = _PUSH_DIGEST.findall(push_output)
    assert found, f"no digest in docker push output:\n{push_output}"
    return str(found[-1])


@dataclass
class DockerCli:
    """The docker CLI against the real daemon; remembers every image it touched for cleanup."""

    binary: str
    refs: set[str] = field(default_factory=set)
    image_ids: set[str] = field(default_factory=set)

    def run(
        self, *args: str, input: bytes | None = None, check: bool = True, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        raw = subprocess.run(
            [self.binary, *args], input=input, capture_output=True, timeout=TIMEOUT_SECONDS, cwd=cwd
        )
        result = subprocess.CompletedProcess(
            raw.args,
            raw.returncode,
            raw.stdout.decode(errors="replace"),
            raw.stderr.decode(errors="replace"),
        )
        if check:
            assert result.returncode == 0, (
                f"docker {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def track(self, ref: str, image_id: str | None = None) -> None:
        self.refs.add(ref)
        if image_id is not None:
            self.image_ids.add(image_id)

    def load(self, image: DockerArchiveImage) -> None:
        self.track(image.ref, image.image_id)
        self.run("load", input=image.archive)

    def inspect(self, ref: str) -> dict[str, object] | None:
        """`docker image inspect`, or None when the daemon does not have the image."""
        result = self.run("image", "inspect", ref, check=False)
        if result.returncode != 0:
            assert "No such image" in result.stderr, result.stderr
            return None
        documents = json.loads(result.stdout)
        assert isinstance(documents, list) and len(documents) == 1
        document = documents[0]
        assert isinstance(document, dict)
        return document

    def cleanup(self) -> None:
        """Remove every tag and image this test made; never anything else."""
        for ref in sorted(self.refs):
            self.run("rmi", ref, check=False)
        for image_id in sorted(self.image_ids):
            self.run("rmi", "--force", image_id, check=False)
