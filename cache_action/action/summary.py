"""The job summary: where the cache came from, what the build did with it, what was saved."""

from __future__ import annotations

from typing import Any


def _mb(count: float) -> str:
    return f"{count / 1e6:,.1f} MB"


def _left(restore: dict[str, Any]) -> str:
    left = restore.get("blobs_left", 0)
    if not left:
        return ""
    return f"; {left} more ({_mb(restore.get('bytes_left', 0))}) left in the store until read"


def _fetched(stats: dict[str, Any]) -> str:
    fetched = stats.get("blobs_fetched", 0)
    if not fetched:
        return ""
    return f"; fetched from the store when read: {fetched} blobs, {_mb(stats['bytes_fetched'])}"


def render(
    scope: str,
    store: str,
    restore: dict[str, Any],
    stats: dict[str, Any] | None,
    registry_problem: str | None,
    gc: dict[str, Any] | None,
    save: dict[str, Any] | None,
    seconds: dict[str, float],
) -> str:
    rows = [("Store", store)]
    restored = restore.get("restored") or []
    hit = restore.get("hit", "none")
    if restored:
        rows.append(
            (
                "Restored",
                f"**{hit}** from `{restored[0]['key']}`"
                + (f" (+{len(restored) - 1} more)" if len(restored) > 1 else "")
                + f": {restore.get('blobs_downloaded', 0)} blobs, "
                f"{_mb(restore.get('bytes_downloaded', 0))}" + _left(restore),
            )
        )
    else:
        rows.append(("Restored", f"**{hit}**: nothing to restore, the build starts cold"))
    if restore.get("tags_dropped"):
        rows.append(("Dropped at restore", ", ".join(restore["tags_dropped"]) + " (incomplete)"))
    if stats:
        rows.append(
            (
                "Build traffic",
                f"{stats.get('requests', 0)} requests; blobs pulled "
                f"{stats.get('blob_hits', 0)} (misses {stats.get('blob_misses', 0)}), "
                f"pushed {stats.get('blobs_pushed', 0)}; {_mb(stats.get('bytes_out', 0))} out, "
                f"{_mb(stats.get('bytes_in', 0))} in" + _fetched(stats),
            )
        )
    if registry_problem:
        rows.append(("Registry", f":warning: {registry_problem}"))
    if gc:
        removed = ", ".join(f"{t['tag']} ({t['reason']})" for t in gc.get("tags_removed", []))
        rows.append(
            (
                "Pruned",
                f"{gc.get('blobs_removed', 0)} blobs, {_mb(gc.get('bytes_freed', 0))}; "
                f"{_mb(gc.get('bytes_after', 0))} kept" + (f"; tags: {removed}" if removed else ""),
            )
        )
    if save:
        if save.get("saved"):
            rows.append(
                (
                    "Saved",
                    f"`{save.get('key')}`: {save.get('blobs_uploaded', 0)} blobs, "
                    f"{_mb(save.get('bytes_uploaded', 0))}",
                )
            )
        else:
            rows.append(("Saved", f"nothing: {save.get('skipped_reason')}"))
    phases = " · ".join(f"{name} {value:.1f} s" for name, value in seconds.items())
    rows.append(("Seconds", phases or "-"))
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return f"### BuildKit cache `{scope}`\n\n| | |\n|---|---|\n{table}\n"
