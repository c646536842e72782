"""Jobs declared in code: which declaration the cluster runs, across versions.

Theory of operation
-------------------
A job declared in code (``@node.cron``, ``@node.job``) is declared by every
replica of a service, each time it starts. It is one job: every replica
declares the same id, and a declaration identical to the cluster's changes
nothing (``Scheduler.add_job`` already keeps an identical definition, and
its schedule's start, as it is). The question is what happens when the
declarations differ: during a rollout, replicas of the old version and of
the new one run side by side, restart, and each declares its own.

Last writer wins would flip the job between the two definitions at every
restart, and an old replica restarting late in the rollout would leave the
cluster on the old definition for good. So a declaration carries a
*revision*, a hash of the definition (``revision``), and the jobs map's
entry of a declared job records, beside the definition, its revision and
the revisions it replaced (``CodeRevision``, at most ``MAX_REPLACED`` of
them, newest first). A node applies its own declaration (``judge``) when:

- the job is not defined: it defines it;
- the job is defined but was not declared in code (``schedule()``, the
  API, a jobs file): the code takes it over;
- its revision is neither the current one nor one the current one
  replaced: it is new, a later version's, and replaces the current one,
  which joins the replaced revisions.

A revision that was replaced never comes back on its own: an old replica
that starts while the new definition is in place finds its revision among
the replaced ones and leaves the job alone. So in a rollout the definition
changes once, when the first replica of the new version has settled, and
stays; while versions are mixed every node, old or new, runs the ticks
with the new definition.

What a node applies keeps the operator's ``paused`` (the revision does not
cover it): a job paused with ``peer jobs pause`` stays paused across
restarts and new revisions. An operator's redefinition (``peer jobs``,
``schedule()``) keeps the code's revision in the entry, so it lasts until
a new revision is rolled out.

Nodes judge again each time the entry of a job they declare changes, so
a write that lost (two revisions introduced at the same moment, or a node
that turned ready before it held the cluster's definitions and wrote an old
one) is put right by the nodes whose declaration is newer: every winning
write adds the revision it replaced to the replaced ones, so this ends
after at most one write per distinct revision. A removed job (its entry
gone, and its history with it) is defined again at once by the live nodes
that declare it: remove the declaration from the code, roll out, then
``peer jobs remove`` it; and after rolling the code back, removing the job
makes the nodes define it afresh from the code they run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, TypeGuard

import attrs

from peer.jobs.definition import JobSpec

__all__ = ["MAX_REPLACED", "CodeRevision", "Verdict", "judge", "revision"]

# Replaced revisions an entry remembers: a replica that many versions old
# could bring its definition back. Each is 16 hex digits.
MAX_REPLACED = 32
REVISION_CHARS = 16


def revision(spec: JobSpec) -> str:
    """The revision of a declared definition: a hash of its wire form,
    without ``paused`` (the operator's, not the code's)."""
    wire = spec.to_wire()
    del wire["paused"]
    text = json.dumps(wire, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:REVISION_CHARS]


def _is_revision(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and len(value) == REVISION_CHARS and all(c in "0123456789abcdef" for c in value)


@attrs.frozen
class CodeRevision:
    """What a jobs map entry records of a declaration: its revision and the
    revisions it replaced, newest first."""

    rev: str
    replaced: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {"rev": self.rev, "replaced": list(self.replaced)}

    @classmethod
    def from_wire(cls, data: Any) -> CodeRevision | None:
        """None for anything malformed: the entry then counts as not declared
        in code, and the next declaring node writes a good one."""
        if not isinstance(data, Mapping):
            return None
        rev, replaced = data.get("rev"), data.get("replaced")
        if not _is_revision(rev) or not isinstance(replaced, list) or len(replaced) > MAX_REPLACED:
            return None
        if not all(_is_revision(item) for item in replaced):
            return None
        return cls(rev, tuple(replaced))

    def succeeded_by(self, rev: str) -> CodeRevision:
        """The record of ``rev`` replacing this revision."""
        replaced = (self.rev, *(r for r in self.replaced if r not in (self.rev, rev)))
        return CodeRevision(rev, replaced[:MAX_REPLACED])


@attrs.frozen
class Verdict:
    """What a node does with its declaration: write ``spec`` with ``code``
    (``apply``), or leave the job as it is; ``why`` says which, for logs."""

    apply: bool
    why: str
    spec: JobSpec | None = None
    code: CodeRevision | None = None


def judge(declared: JobSpec, rev: str, current: JobSpec | None, code: CodeRevision | None) -> Verdict:
    """Apply the rules of the module's theory to a declaration (``declared``,
    revision ``rev``) and the job as the cluster defines it: ``current``
    (None: not defined) with its ``code`` record (None: not declared in code)."""
    if current is None:
        return Verdict(True, "not defined yet", declared, CodeRevision(rev))
    kept = attrs.evolve(declared, paused=current.paused) if declared.paused != current.paused else declared
    if code is None:
        return Verdict(True, "defined otherwise: the code takes it over", kept, CodeRevision(rev))
    if code.rev == rev:
        return Verdict(False, "current")
    if rev in code.replaced:
        return Verdict(False, f"replaced by revision {code.rev}")
    return Verdict(True, f"a new revision, replacing {code.rev}", kept, code.succeeded_by(rev))
