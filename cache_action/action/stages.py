"""The two stages of the action. Main: inputs → scopes → restore → start the registry →
outputs. Post: stop the registry → prune → save → report. Only invalid inputs fail the job;
every other problem is a warning and a cold cache, unless `strict` is set."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cache_action.action import sibling, workflow
from cache_action.action.inputs import Inputs, SavePolicy
from cache_action.action.state import StageState
from cache_action.action.summary import render
from cache_action.errors import CacheActionError, InputError, RegistryStartError, StoreError
from cache_action.scopes import EntryName, GitContext, plan_scopes
from cache_action.storage.access import read_stats
from cache_action.storage.gc import drop_tags
from cache_action.storage.layout import Layout
from cache_action.storage.lock import root_lock
from cache_action.storage.prune import PrunePolicy, prune
from cache_action.stores.base import EntryInfo, HitKind, RestoreResult, SaveResult, Store
from cache_action.stores.factory import open_store
from cache_action.stores.snapshot import RESTORED_FILE

DEFAULT_RUNNER_TEMP = "/github/runner_temp"


def _open_store(inputs: Inputs, env: Mapping[str, str]) -> Store:
    s3 = {
        "region": inputs.s3_region,
        "endpoint_url": inputs.s3_endpoint,
        "access_key_id": inputs.s3_access_key_id,
        "secret_access_key": inputs.s3_secret_access_key,
    }
    return open_store(inputs.store, env, "store", s3, inputs.github_token or None)


Helper = tuple[Any, sibling.ActionContainer]


def _store_helper(inputs: Inputs) -> Helper | None:
    """A `local://` store on the runner host outside the action container's mounts (an NFS
    mount, a directory kept between jobs) is invisible to this container, and whatever it wrote
    there would vanish with it (`docker run --rm`): such a store is read and written by a sibling
    container that mounts the directory. None: this process can use the store directly."""
    if not inputs.store.startswith("local:///"):
        return None
    try:
        client = sibling.docker_client()
        me = sibling.inspect_self(client)
    except RegistryStartError:
        return None  # not in a container (run outside GitHub): the path is this process's own
    return None if me.sees(inputs.store.removeprefix("local://")) else (client, me)


def _restore_in_sibling(
    helper: Helper, inputs: Inputs, chains: tuple[tuple[EntryName, ...], ...], layout: Layout
) -> RestoreResult:
    """`python -m cache_action restore` with the same chains (every chain lists the same refs)."""
    refs = [name.ref for name in chains[0]]
    arguments = ["restore", "--root", sibling.ROOT_IN_REGISTRY, "--store", inputs.store]
    arguments += ["--namespace", chains[0][0].namespace, "--ref", refs[0], "--strict"]
    for chain in chains:
        arguments += ["--scope", chain[0].scope]
    for ref in refs[1:]:
        arguments += ["--fallback-ref", ref]
    document = _json_result(
        sibling.run_cache_command(*helper, arguments, layout.root, [_path(inputs)])
    )
    restored = [EntryInfo(EntryName("", "", ""), str(key), 0.0) for key in document["restored"]]
    return RestoreResult(
        hit=HitKind(document["hit"]),
        restored=restored,
        blobs_downloaded=int(document["blobs_downloaded"]),
        bytes_downloaded=int(document["bytes_downloaded"]),
        tags_dropped=[str(tag) for tag in document["tags_dropped"]],
        seconds=float(document["seconds"]),
    )


def _save_in_sibling(helper: Helper, inputs: Inputs, name: EntryName, layout: Layout) -> SaveResult:
    arguments = ["save", "--root", sibling.ROOT_IN_REGISTRY, "--store", inputs.store, "--strict"]
    arguments += ["--namespace", name.namespace, "--scope", name.scope, "--ref", name.ref]
    document = _json_result(
        sibling.run_cache_command(*helper, arguments, layout.root, [_path(inputs)])
    )
    fields = SaveResult.__dataclass_fields__
    return SaveResult(**{key: value for key, value in document.items() if key in fields})


def _path(inputs: Inputs) -> str:
    return inputs.store.removeprefix("local://")


def _json_result(output: str) -> dict[str, Any]:
    try:
        document = json.loads(output)
    except ValueError:
        raise StoreError(f"unexpected output from the store container: {output[-500:]!r}") from None
    if not isinstance(document, dict):
        raise StoreError(f"unexpected output from the store container: {output[-500:]!r}")
    return document


def _soft_fail(inputs: Inputs, what: str, error: Exception) -> bool:
    """Report a runtime failure; True when the job must fail (strict mode)."""
    if inputs.strict:
        workflow.error(f"{what}: {error}", title="BuildKit cache (strict)")
        return True
    workflow.warning(f"{what}, continuing without it: {error}", title="BuildKit cache")
    return False


def _inputs(env: Mapping[str, str]) -> Inputs | None:
    try:
        inputs = Inputs.from_env(env)
    except InputError as error:
        workflow.error(str(error), title=f"Invalid input '{error.name}'")
        return None
    for secret in inputs.secrets():
        workflow.mask(secret)
    return inputs


def main(env: Mapping[str, str]) -> int:
    inputs = _inputs(env)
    if inputs is None:
        return 1
    plan = plan_scopes(
        GitContext.from_env(env),
        inputs.namespace,
        inputs.scope,
        inputs.restore_scopes,
        inputs.branch_fallback,
        inputs.fallback_refs,
        inputs.read_only,
    )
    workdir = Path(env.get("RUNNER_TEMP") or DEFAULT_RUNNER_TEMP) / f"cache-action-{inputs.port}"
    state = StageState(
        root=str(workdir / "root"), run_dir=str(workdir / "run"), started_at=time.time()
    )
    if plan.save_to is not None:
        state.save_to = [plan.save_to.namespace, plan.save_to.scope, plan.save_to.ref]
    state.read_only_reason = plan.read_only_reason or ""
    state.save()
    layout = Layout(state.root)

    with workflow.group(f"Restore the BuildKit cache (scope {inputs.scope})"):
        started = time.monotonic()
        result = RestoreResult()
        try:
            helper = _store_helper(inputs)
            if helper is not None:  # the CLI in the sibling takes the root's lock itself
                result = _restore_in_sibling(helper, inputs, plan.restore_chains, layout)
            else:
                store = _open_store(inputs, env)
                with root_lock(layout, "restore"):
                    result = store.restore(layout, plan.restore_chains)
        except InputError as error:  # a store setting the store itself rejects
            workflow.error(str(error), title=f"Invalid input '{error.name}'")
            return 1
        except (StoreError, OSError) as error:
            if _soft_fail(inputs, "Restoring the cache failed", error):
                return 1
        state.restore = result.to_json()
        state.seconds["restore"] = time.monotonic() - started
        workflow.info(f"cache hit: {result.hit.value}; {json.dumps(result.to_json())}")

    with workflow.group("Start the registry"):
        started = time.monotonic()
        try:
            client = sibling.docker_client()
            me = sibling.inspect_self(client)
            registry = sibling.start_registry(
                client, me, layout.root, Path(state.run_dir), inputs.port
            )
        except (RegistryStartError, OSError) as error:
            state.save()
            _outputs(inputs, result, None)
            return 1 if _soft_fail(inputs, "The cache registry did not start", error) else 0
        state.container_id = registry.id
        state.registry = registry.address
        state.seconds["start"] = time.monotonic() - started
        workflow.info(f"registry ready at {registry.address}")
    state.save()
    _outputs(inputs, result, registry)
    return 0


def _outputs(
    inputs: Inputs, result: RestoreResult, registry: sibling.RegistryContainer | None
) -> None:
    outputs = {
        "cache-hit": result.hit.value,
        "restored-key": result.restored_key,
        "restored-bytes": str(result.bytes_downloaded),
        "registry": registry.address if registry else "",
        "network-registry": (registry.network_address or "") if registry else "",
        "cache-from": "",
        "cache-to": "",
    }
    if registry is not None:
        base = f"{registry.address}/{inputs.repository}"
        scopes = dict.fromkeys([inputs.scope, *inputs.restore_scopes])
        outputs["cache-from"] = "\n".join(f"type=registry,ref={base}:{s}" for s in scopes)
        outputs["cache-to"] = (
            f"type=registry,ref={base}:{inputs.scope},mode={inputs.mode},"
            f"ignore-error={'false' if inputs.strict else 'true'}"
        )
    workflow.set_outputs(outputs)


def post(env: Mapping[str, str]) -> int:
    state = StageState.load(env)
    if state is None or not state.root:
        # Main failed before it touched anything (e.g. an invalid input, already reported
        # there): nothing to clean up, and no second annotation for the same problem.
        workflow.info("nothing to do: the main stage did not get as far as the cache")
        return 0
    inputs = _inputs(env)
    if inputs is None:
        return 0
    layout = Layout(state.root)
    problem: str | None = None
    if state.container_id:
        with workflow.group("Stop the registry"):
            started = time.monotonic()
            report = sibling.stop_registry(sibling.docker_client(), state.container_id)
            state.seconds["stop"] = time.monotonic() - started
            if report.crashed:
                problem = "the registry stopped unexpectedly; only complete entries are kept"
                workflow.warning(f"{problem}\n{report.logs[-2000:]}", title="BuildKit cache")
    if not layout.root.is_dir():
        workflow.info("nothing to save: the cache root does not exist")
        return 0
    failed = False
    gc_report: dict[str, Any] | None = None
    save_report: dict[str, Any] | None = None
    try:
        helper = _store_helper(inputs)
        with root_lock(layout, "post"):
            gc_report = _prune(inputs, layout, state)
            if helper is None:
                save_report = _save(inputs, env, layout, state, None)
        if helper is not None:  # the CLI in the sibling takes the root's lock itself
            save_report = _save(inputs, env, layout, state, helper)
    except (StoreError, OSError, CacheActionError) as error:
        failed = _soft_fail(inputs, "Saving the cache failed", error)
    workflow.append_summary(
        render(
            inputs.scope,
            inputs.store if inputs.store != "gha" else "GitHub Actions cache",
            state.restore,
            read_stats(layout),
            problem,
            gc_report,
            save_report,
            state.seconds,
        )
    )
    return 1 if failed else 0


def _prune(inputs: Inputs, layout: Layout, state: StageState) -> dict[str, Any]:
    """Keep only this job's tags for its own entry (merged-in scopes have their own entries),
    then TTL, budget and integrity; nothing this run used is dropped."""
    with workflow.group("Prune the cache"):
        started = time.monotonic()
        others = {(inputs.repository, s) for s in inputs.restore_scopes if s != inputs.scope}
        drop_tags(layout, others)
        policy = PrunePolicy(
            ttl_seconds=inputs.ttl_seconds,
            max_size_bytes=inputs.max_size_bytes,
            protect_since=state.started_at or None,
        )
        report = prune(layout, policy).to_json()
        state.seconds["prune"] = time.monotonic() - started
        for item in report["tags_removed"]:
            workflow.info(f"pruned {item['tag']} ({item['reason']})")
        workflow.info(json.dumps(report))
        return report


def _save(
    inputs: Inputs,
    env: Mapping[str, str],
    layout: Layout,
    state: StageState,
    helper: Helper | None,
) -> dict[str, Any]:
    if inputs.save is SavePolicy.NEVER:
        return SaveResult(skipped_reason="save: never").to_json()
    if not state.save_to:
        reason = state.read_only_reason or "this job may not write the cache"
        return SaveResult(skipped_reason=reason).to_json()
    if inputs.save is SavePolicy.ALWAYS:
        (layout.meta_dir / RESTORED_FILE).unlink(missing_ok=True)
    with workflow.group("Save the cache"):
        started = time.monotonic()
        name = EntryName(*state.save_to)
        if helper is not None:
            result = _save_in_sibling(helper, inputs, name, layout)
        else:
            result = _open_store(inputs, env).save(layout, name)
        state.seconds["save"] = time.monotonic() - started
        workflow.info(json.dumps(result.to_json()))
        for text in result.warnings:
            workflow.warning(text, title="BuildKit cache")
        return result.to_json()
