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
from cache_action.action.inputs import Inputs, RestoreMode, SavePolicy
from cache_action.action.sibling_store import SiblingStore
from cache_action.action.state import StageState
from cache_action.action.summary import render
from cache_action.errors import CacheActionError, InputError, RegistryStartError, StoreError
from cache_action.runner import RunnerContext
from cache_action.scopes import EntryName, plan_scopes
from cache_action.storage.access import read_stats
from cache_action.storage.gc import drop_tags
from cache_action.storage.prune import PrunePolicy, prune
from cache_action.storage.root import Storage
from cache_action.stores.base import RestoreResult, SaveResult, Store
from cache_action.stores.factory import open_store, write_source_file
from cache_action.stores.spec import GhaSpec, LocalSpec


def open_job_store(inputs: Inputs, runner: RunnerContext) -> Store:
    """A `local://` store outside the action container's mounts goes through a sibling."""
    if isinstance(inputs.store, LocalSpec):
        through_sibling = SiblingStore.needed_for(inputs.store)
        if through_sibling is not None:
            return through_sibling
    return open_store(inputs.store, runner)


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


# --- main -------------------------------------------------------------------------------------


def main(env: Mapping[str, str]) -> int:
    workflow.configure_logging(env)
    inputs = _inputs(env)
    if inputs is None:
        return 1
    runner = RunnerContext.from_env(env)
    plan = plan_scopes(
        runner.git,
        inputs.namespace,
        inputs.scope,
        inputs.restore_scopes,
        inputs.branch_fallback,
        inputs.fallback_refs,
        inputs.read_only,
    )
    state = StageState.begin(runner.temp / f"cache-action-{inputs.port}", plan)
    storage = Storage.open(state.root)
    with workflow.group(f"Restore the BuildKit cache (scope {inputs.scope})"):
        started = time.monotonic()
        result = RestoreResult()
        lazy = inputs.restore is RestoreMode.LAZY
        try:
            result = open_job_store(inputs, runner).restore(storage, plan.restore_chains, lazy)
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
            lazy_source = _lazy_source(inputs, runner, storage, Path(state.run_dir))
            client = sibling.docker_client()
            me = sibling.inspect_self(client)
            registry = sibling.start_registry(
                client, me, storage.layout.root, Path(state.run_dir), inputs.port, lazy_source
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


def _lazy_source(
    inputs: Inputs, runner: RunnerContext, storage: Storage, run_dir: Path
) -> str | None:
    """After a lazy restore, the file that tells the registry how to fetch what stayed in the
    store (its name in the run directory, which the registry sees), or None."""
    if not storage.remote:
        return None
    if not inputs.prefetch:
        storage.remote.without_prefetch()
    write_source_file(run_dir / sibling.LAZY_SOURCE_FILE, inputs.store, runner)
    return sibling.LAZY_SOURCE_FILE


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


# --- post -------------------------------------------------------------------------------------


def post(env: Mapping[str, str]) -> int:
    workflow.configure_logging(env)
    state = StageState.load(env)
    if state is None or not state.root:
        # Main failed before it touched anything (e.g. an invalid input, already reported
        # there): nothing to clean up, and no second annotation for the same problem.
        workflow.info("nothing to do: the main stage did not get as far as the cache")
        return 0
    inputs = _inputs(env)
    if inputs is None:
        return 0
    problem = _stop_registry(state)
    if not Path(state.root).is_dir():
        workflow.info("nothing to save: the cache root does not exist")
        return 0
    storage = Storage.open(state.root)
    failed = False
    gc_report: dict[str, Any] | None = None
    save_report: dict[str, Any] | None = None
    try:
        gc_report = _prune(inputs, storage, state)
        save_report = _save(inputs, RunnerContext.from_env(env), storage, state)
    except (StoreError, OSError, CacheActionError) as error:
        failed = _soft_fail(inputs, "Saving the cache failed", error)
    store = "GitHub Actions cache" if isinstance(inputs.store, GhaSpec) else inputs.store.url
    workflow.append_summary(
        render(
            inputs.scope,
            store,
            state.restore,
            read_stats(storage.layout),
            problem,
            gc_report,
            save_report,
            state.seconds,
        )
    )
    return 1 if failed else 0


def _stop_registry(state: StageState) -> str | None:
    """Stop the sibling registry (it flushes its access record); the problem, if it crashed."""
    if not state.container_id:
        return None
    with workflow.group("Stop the registry"):
        started = time.monotonic()
        report = sibling.stop_registry(sibling.docker_client(), state.container_id)
        state.seconds["stop"] = time.monotonic() - started
        if not report.crashed:
            return None
        problem = "the registry stopped unexpectedly; only complete entries are kept"
        workflow.warning(f"{problem}\n{report.logs[-2000:]}", title="BuildKit cache")
        return problem


def _prune(inputs: Inputs, storage: Storage, state: StageState) -> dict[str, Any]:
    """Keep only this job's tags for its own entry (merged-in scopes have their own entries),
    then TTL, budget and integrity; nothing this run used is dropped."""
    with workflow.group("Prune the cache"):
        started = time.monotonic()
        others = {(inputs.repository, s) for s in inputs.restore_scopes if s != inputs.scope}
        drop_tags(storage, others)
        policy = PrunePolicy(
            ttl_seconds=inputs.ttl_seconds,
            max_size_bytes=inputs.max_size_bytes,
            protect_since=state.started_at or None,
        )
        report = prune(storage, policy).to_json()
        state.seconds["prune"] = time.monotonic() - started
        for item in report["tags_removed"]:
            workflow.info(f"pruned {item['tag']} ({item['reason']})")
        workflow.info(json.dumps(report))
        return report


def _save(
    inputs: Inputs, runner: RunnerContext, storage: Storage, state: StageState
) -> dict[str, Any]:
    if inputs.save is SavePolicy.NEVER:
        return SaveResult(skipped_reason="save: never").to_json()
    if not state.save_to:
        reason = state.read_only_reason or "this job may not write the cache"
        return SaveResult(skipped_reason=reason).to_json()
    with workflow.group("Save the cache"):
        started = time.monotonic()
        store = open_job_store(inputs, runner)
        force = inputs.save is SavePolicy.ALWAYS
        result = store.save(storage, EntryName(*state.save_to), force=force)
        state.seconds["save"] = time.monotonic() - started
        workflow.info(json.dumps(result.to_json()))
        for text in result.warnings:
            workflow.warning(text, title="BuildKit cache")
        return result.to_json()
