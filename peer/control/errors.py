"""The exceptions a program gets from a node, whether it holds the node
(``peer.Node``) or talks to one over the control API (``peer.Client``,
``peer.AsyncClient``): one set of types, so code written against one works
against the other. They live here, apart from both, so that the client does
not import the embedding's runtime to raise them."""

from __future__ import annotations

from peer.jobs.runs import RunRecord

__all__ = ["RunFailed", "RunFinishedError", "UnknownJob", "UnknownRun"]


class RunFailed(Exception):
    """A run finished without succeeding: ``failed`` (after its last
    attempt), ``cancelled``, ``lost``, ``missed`` or ``skipped``. ``record``
    is its run record, ``error`` the error it ended with, ``state`` how."""

    def __init__(self, record: RunRecord) -> None:
        self.record = record
        self.run_id = record.id
        self.state = record.state
        self.error = record.error
        headline = (record.error or "").strip().splitlines()
        super().__init__(f"run {record.id} {record.state.value}" + (f": {headline[0]}" if headline else ""))


class UnknownRun(LookupError):
    """No run by that id is known to this node (never was, not yet, or its
    record has expired)."""

    def __init__(self, run_id: str, detail: str = "") -> None:
        self.run_id = run_id
        super().__init__(f"no such run: {run_id}{detail}")


class UnknownJob(LookupError):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no such job: {job_id}")


class RunFinishedError(ValueError):
    """An update sent to a run that has finished: nothing reads it any more."""

    def __init__(self, record: RunRecord) -> None:
        self.record = record
        super().__init__(f"run {record.id} has finished ({record.state.value}): nothing reads updates any more")
