"""Undo of an answer's learning, through the learner's public calls only.

The learner can undo its newest update bit for bit (``undo_last_update``) and remove an
example so it is never trained on again (``remove_example``); it cannot take back older
updates. This module picks the strongest of these that applies and says which one it used.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

from workbench.labeling.table import Answer, AnswerTable
from workbench.learner import LearnerError, OnlineLearner

__all__ = ["resend_undone", "take_back"]


def take_back(learner: OnlineLearner, last: Answer, resend: Callable[[], int]) -> tuple[str, str]:
    """Take back what ``last`` (an answer with an example) taught: ``(learning, message)``.

    ``learning`` is ``"not-trained"`` (no update had used it: the example is removed),
    ``"undone"`` (the learner's last update was the only one since the answer: it is undone
    with ``undo_last_update``; ``resend`` gives back the other answers that update took),
    ``"removed"`` (older updates learned it; they stay and the message says so) or
    ``"none"``. Background learning is paused meanwhile, so no update slips in between.
    """
    was_enabled = learner.enabled
    if was_enabled:
        learner.disable()  # no background update may start between the check and the undo
    try:
        record = next((r for r in learner.recent_examples(1000) if r.id == last.example_id), None)
        status = "trained" if record is None else record.status
        if status in ("removed", "undone"):
            return "none", "its example was already taken back"
        if status == "stored":
            learner.remove_example(last.example_id or "")
            return "not-trained", "its example was removed before any update learned it"
        since = int(learner.get_stats()["total_updates"]) - last.updates_at
        if since == 1:
            try:
                learner.undo_last_update()
            except LearnerError:
                pass
            else:
                again = resend()
                learner.remove_example(last.example_id or "")
                extra = (
                    f"; {again} other answer(s) from that update were sent again" if again else ""
                )
                return "undone", f"the update that learned it was undone{extra}"
        learner.remove_example(last.example_id or "")
        return "removed", (
            f"its example was removed, but {since} update(s) since the answer already "
            "learned from it and stay (the learner undoes only its last update)"
        )
    finally:
        if was_enabled:
            learner.enable()


def resend_undone(
    learner: OnlineLearner,
    others: Sequence[Answer],
    table: AnswerTable,
    send: Callable[[Answer], object],
) -> int:
    """Answers among ``others`` whose examples the learner's undo also took back get new
    examples (a new id each, stored before it is sent); returns how many."""
    ids = {a.example_id: a for a in others if a.example_id is not None}
    undone = [r.id for r in learner.recent_examples(1000) if r.status == "undone"]
    sent = 0
    for eid in undone:
        a = ids.get(eid)
        if a is None:
            continue
        new_id = f"label-{a.input_hash}-{uuid.uuid4().hex[:12]}"
        table.set(a.n, example_id=new_id, example_added=0)
        send(Answer(**{**a.__dict__, "example_id": new_id}))
        sent += 1
    return sent
