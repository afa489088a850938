"""A `local://` store only a sibling container can reach, as a Store like any other.

A directory on the runner host outside the action container's mounts (an NFS mount, a
directory kept between jobs) is invisible to the action container, and what it wrote there
would vanish with it (`docker run --rm`). So the store is read and written by a short-lived
sibling that mounts the directory at the same path and the cache root at /cache, running this
package's own `restore`/`save` commands; their JSON output is the result. The sibling's command
takes the root's lock, as every restore and save does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from cache_action.action import sibling
from cache_action.errors import RegistryStartError, StoreError
from cache_action.scopes import EntryName
from cache_action.storage.root import Storage
from cache_action.stores.base import RestoreResult, SaveResult
from cache_action.stores.spec import LocalSpec

Result = TypeVar("Result", RestoreResult, SaveResult)


class SiblingStore:
    def __init__(self, client: Any, me: sibling.ActionContainer, spec: LocalSpec) -> None:
        self.client = client
        self.me = me
        self.spec = spec
        self.description = f"local:{spec.path} (through a sibling container)"

    @classmethod
    def needed_for(cls, spec: LocalSpec) -> SiblingStore | None:
        """The store, when this process runs in a container that does not see `spec.path`;
        None when it can use the directory itself (it is mounted, or this is no container)."""
        try:
            client = sibling.docker_client()
            me = sibling.inspect_self(client)
        except RegistryStartError:
            return None  # not in a container (run outside GitHub): the path is this process's
        return None if me.sees(str(spec.path)) else cls(client, me, spec)

    def restore(
        self, storage: Storage, chains: Sequence[Sequence[EntryName]], lazy: bool = False
    ) -> RestoreResult:
        """Every chain lists the same refs (scopes.plan_scopes), so one command restores all.
        Always eager: the registry could not reach this directory to fetch a blob later."""
        refs = [name.ref for name in chains[0]]
        arguments = self._arguments("restore", chains[0][0].namespace, refs[0])
        for chain in chains:
            arguments += ["--scope", chain[0].scope]
        for ref in refs[1:]:
            arguments += ["--fallback-ref", ref]
        return self._run(arguments, storage.layout.root, RestoreResult.from_json)

    def save(self, storage: Storage, name: EntryName, force: bool = False) -> SaveResult:
        arguments = [*self._arguments("save", name.namespace, name.ref), "--scope", name.scope]
        if force:
            arguments.append("--force")
        return self._run(arguments, storage.layout.root, SaveResult.from_json)

    def _arguments(self, verb: str, namespace: str, ref: str) -> list[str]:
        return [
            *(verb, "--root", sibling.ROOT_IN_REGISTRY, "--store", self.spec.url),
            *("--namespace", namespace, "--ref", ref, "--strict"),
        ]

    def _run(self, arguments: list[str], root: Path, parse: Callable[[Any], Result]) -> Result:
        output = sibling.run_cache_command(
            self.client, self.me, arguments, root, [str(self.spec.path)]
        )
        try:
            return parse(json.loads(output))
        except (ValueError, KeyError, TypeError) as error:
            raise StoreError(
                f"unexpected output from the store container ({error}): {output[-500:]!r}"
            ) from None
