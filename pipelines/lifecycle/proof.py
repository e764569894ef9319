"""Proof status: has a version beaten its strongest baseline on rows it never learnt?

A training judges its model against every baseline on its held-out rows (`mlproject.scoring`)
and records whether it beats them all in the bundle's metadata (`beats_baseline`). A version
that does not is *unproven*: its signal is HOLD unless `ML_SERVE_UNPROVEN` is set, and it never
replaces a proven production version. This module is the only place that reads the status.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

Proof = Literal["proven", "unproven"]
PROVEN: Proof = "proven"
UNPROVEN: Proof = "unproven"
_RANK = {UNPROVEN: 0, PROVEN: 1}


def proof_of(metadata: Mapping[str, Any]) -> Proof:
    """The proof status of a version from its bundle's metadata (no verdict: unproven)."""
    return PROVEN if metadata.get("beats_baseline") is True else UNPROVEN


def weaker(challenger: Proof, production: Proof) -> bool:
    """The challenger's proof is weaker than production's (unproven against proven)."""
    return _RANK[challenger] < _RANK[production]


def holds_signal(proof: Proof, *, serve_unproven: bool) -> bool:
    """An unproven version answers HOLD unless the operator serves unproven signals."""
    return proof == UNPROVEN and not serve_unproven
