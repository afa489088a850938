"""What the main stage hands to the post stage (`$GITHUB_STATE` → `STATE_*`): the only reader
and writer of those names."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cache_action.action import workflow
from cache_action.scopes import ScopePlan

_KEY = "cache_action"


@dataclass
class StageState:
    root: str = ""
    run_dir: str = ""
    container_id: str = ""
    registry: str = ""
    started_at: float = 0.0  # tags used since then are this run's: prune never drops them
    save_to: list[str] = field(default_factory=list)  # [namespace, scope, ref], empty: read-only
    read_only_reason: str = ""
    restore: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def begin(cls, workdir: Path, plan: ScopePlan) -> StageState:
        """Main's first state, saved at once: post finds the root even if main dies later."""
        state = cls(
            root=str(workdir / "root"), run_dir=str(workdir / "run"), started_at=time.time()
        )
        if plan.save_to is not None:
            state.save_to = [plan.save_to.namespace, plan.save_to.scope, plan.save_to.ref]
        state.read_only_reason = plan.read_only_reason or ""
        state.save()
        return state

    def save(self) -> None:
        """Written as one JSON value, and again whenever main learns more: post sees the last."""
        workflow.save_state({_KEY: json.dumps(asdict(self))})

    @classmethod
    def load(cls, env: Mapping[str, str]) -> StageState | None:
        raw = env.get(f"STATE_{_KEY}")
        if not raw:
            return None
        try:
            document = json.loads(raw)
            return cls(**{k: v for k, v in document.items() if k in cls.__dataclass_fields__})
        except (ValueError, TypeError):
            return None
