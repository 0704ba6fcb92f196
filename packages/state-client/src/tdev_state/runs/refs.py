"""A run's refs: the caller's own ids for a run (T-Developer's API knows its `project_…` id, never the
pipeline's `prod_…` one), unique per env, given when the run is opened.

Each ref is one small item in the sessions table whose key is `ref#<ref>` and which names the run
(`run_id`). The `#` makes the key impossible as a run id (`validate.identifier` refuses `#`), and the item
carries none of the indexes' key attributes (`user_id`, `recovery_shard`, `created_day`), so no index — by
user, by day, the recovery sweep, the console's lists — ever shows it: every listing of the sessions table
goes through an index (never a Scan).

The ref items are Put in the SAME TransactWriteItems as the session item, each `attribute_not_exists`: a
run and its refs exist together or not at all, and a taken ref refuses the whole create (`RefTakenError`).
Reading a run by id or ref is ONE BatchGetItem of both keys (`resolve`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tdev_state import validate as check
from tdev_state.exceptions import RefTakenError, SessionNotFoundError, ValidationError
from tdev_state.layer import DynamoLayer
from tdev_state.models import Session
from tdev_state.runs.writer import CONDITION_FAILED, Again, Duplicate, Landed, RowWrite, Write
from tdev_state.storage import CancellationReason, Item, TransactAction

#: The key prefix of a ref item. `#` is refused in run ids, so a ref key never collides with a run.
REF_PREFIX = "ref#"
#: Refs one run may carry (each is one more Put in the run's creating transaction: 2 write units each).
MAX_REFS = 8


def ref_key(ref: str) -> str:
    """The sessions-table key of the item that holds `ref`."""
    return REF_PREFIX + ref


def is_ref_item(item: Item) -> bool:
    """True for a ref item (never a run), for any reader that meets the sessions table's items."""
    return str(item.get("session_id", "")).startswith(REF_PREFIX)


def checked_refs(refs: Sequence[str] | None) -> tuple[str, ...]:
    """The refs of a new run, validated as ids (the identifier rule), duplicates removed, order kept."""
    if refs is None:
        return ()
    if isinstance(refs, str) or not isinstance(refs, Sequence):
        raise ValidationError(f"refs must be a list of strings, got {type(refs).__name__} {refs!r:.60}")
    unique = tuple(dict.fromkeys(check.identifier("ref", ref) for ref in refs))
    if len(unique) > MAX_REFS:
        raise ValidationError(f"a run may carry at most {MAX_REFS} refs, got {len(unique)}")
    return unique


def ref_puts(
    table: str, sid: str, refs: Sequence[str], *, created_at: Any, expires_at: Any
) -> list[TransactAction]:
    """One conditional Put per ref, for the run's creating transaction (the ref expires with the run)."""
    actions = []
    for ref in refs:
        item: dict[str, Any] = {"session_id": ref_key(ref), "run_id": sid, "created_at": created_at}
        if expires_at is not None:
            item["expires_at"] = expires_at
        actions.append(TransactAction("Put", table, item=item, condition="attribute_not_exists(session_id)"))
    return actions


class CreateWithRefs(RowWrite[Session]):
    """A run's creation with its refs: the session Put and the ref Puts in one transaction. A refusal of the
    session's own Put is classified as a create alone is (`refused`); a refused ref is `RefTakenError`."""

    def __init__(
        self,
        sid: str,
        put: TransactAction,
        refs: Sequence[str],
        ref_actions: Sequence[TransactAction],
        *,
        refused: Callable[[Item | None], Session | Landed],
        applied: Callable[[Item | None], Session],
        **kwargs: Any,
    ) -> None:
        super().__init__(sid, put, refused=refused, applied=applied, **kwargs)
        self._put = put
        self._refs = tuple(refs)
        self._ref_actions = tuple(ref_actions)
        self.makes_version = 1  # a new run (nothing returned from a transaction says so)

    def write(self) -> Write:
        return Write([self._put, *self._ref_actions])

    def refused(self, reasons: list[CancellationReason]) -> Session | Again | Landed | Duplicate[Session]:
        first = reasons[0] if reasons else None
        if first is not None and first.code == CONDITION_FAILED:
            return self._refused(first.old_item)
        for ref, reason in zip(self._refs, reasons[1:], strict=False):
            if reason.code == CONDITION_FAILED:
                owner = (
                    str(reason.old_item["run_id"])
                    if reason.old_item and "run_id" in reason.old_item
                    else None
                )
                raise RefTakenError(
                    f"ref {ref!r} already belongs to run {owner!r} (refs are unique per env); nothing was "
                    f"written for run {self.session_id!r}: open it without that ref, or with another",
                    ref=ref,
                    run_id=owner,
                )
        return self._refused(None)  # pragma: no cover - a cancellation always names its failed action


def resolve(layer: DynamoLayer, id_or_ref: str) -> str:
    """The run id that `id_or_ref` names — a run's own id, or one of its refs — in ONE BatchGetItem of both
    keys (consistent). A run id wins over a ref of the same spelling. SessionNotFoundError when neither
    exists."""
    key = check.identifier("id_or_ref", id_or_ref, existing=True)
    table = layer.tables.sessions
    keys = [{"session_id": key}]
    # A name longer than an id may be is no ref (refs pass the identifier rule), and its ref key could pass
    # DynamoDB's 2,048-byte key limit, which refuses the whole read as invalid: looked up as a run id only.
    if not key.startswith(REF_PREFIX) and len(key.encode("utf-8")) <= check.MAX_ID_BYTES:
        keys.append({"session_id": ref_key(key)})
    found = {str(item["session_id"]): item for item in layer.batch_get(table, keys, consistent=True)}
    if key in found and not key.startswith(REF_PREFIX):
        return key
    ref = found.get(ref_key(key))
    if ref is not None and isinstance(ref.get("run_id"), str):
        return str(ref["run_id"])
    raise SessionNotFoundError(
        f"no pipeline run and no ref {key!r} in env {layer.config.env!r}; check the id, or the env"
    )
