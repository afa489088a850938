"""skopeo (containers/image) as the tests drive it, and what they compare with."""

from __future__ import annotations

import json
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.images import Image

TIMEOUT_SECONDS = 300
MB = 1024 * 1024


@dataclass(frozen=True)
class Skopeo:
    binary: str

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # --insecure-policy: do not depend on the machine's /etc/containers/policy.json.
        result = subprocess.run(
            [self.binary, "--insecure-policy", *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
        )
        if check:
            assert result.returncode == 0, (
                f"skopeo {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def push(self, image: Image, destination: str, *extra: str) -> str:
        """Copy an OCI layout into the registry unchanged; returns the pushed manifest digest."""
        digest_file = image.layout.parent / f"{image.layout.name}.{secrets.token_hex(4)}.digest"
        self.run(
            "copy",
            "--preserve-digests",  # fail rather than rewrite the manifest or recompress layers
            "--dest-tls-verify=false",
            f"--digestfile={digest_file}",
            *extra,
            f"oci:{image.layout}:{image.tag}",
            f"docker://{destination}",
        )
        return digest_file.read_text().strip()

    def pull(self, source: str, layout: Path, tag: str) -> None:
        self.run(
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            f"docker://{source}",
            f"oci:{layout}:{tag}",
        )

    def inspect_raw(self, reference: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(
            "inspect", "--raw", "--tls-verify=false", f"docker://{reference}", check=check
        )

    def list_tags(self, repository: str) -> list[str]:
        output = self.run("list-tags", "--tls-verify=false", f"docker://{repository}").stdout
        tags = json.loads(output)["Tags"]
        assert isinstance(tags, list)
        return sorted(str(tag) for tag in tags)


def layout_blobs(layout: Path) -> dict[str, bytes]:
    """Every blob of an OCI layout, by digest."""
    return {
        f"sha256:{path.name}": path.read_bytes()
        for path in sorted((layout / "blobs" / "sha256").iterdir())
    }


def unique(prefix: str) -> str:
    """A repository name no other test (or earlier run on a reused port) collides with."""
    return f"{prefix}-{secrets.token_hex(4)}"


# --- fixtures -------------------------------------------------------------------------------
