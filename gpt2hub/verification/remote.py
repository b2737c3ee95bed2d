"""`gpt2hub verify hf://ORG/REPO[@REVISION]`: a Hub repo's GPT-2 files, fetched into the store's cache and proven.

hub_pull.fetch_repo pins the revision to its commit and brings config.json, the weights and the tokenizer files
into the store's cache folder for that commit (resumed from `.part`, each checked against the sha256 or git blob
id the Hub lists, as `pull hf://` does); the folder is then proven against the release like any HF folder
(foreign.verify_file). Nothing is imported as a release. The folder is kept: verifying the same commit again, or
pulling it, downloads nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..hub_pull import HubFiles, fetch_repo, parse
from ..progress import Reporter
from ..trust import Check
from .foreign import ForeignProof, verify_file


@dataclass
class RemoteProof:
    """A Hub repo's files (where they came from, what vouched for them) and their proof against a release."""

    hub: HubFiles
    proof: ForeignProof

    @property
    def passed(self) -> bool:
        return self.proof.passed

    @property
    def verdict(self) -> str:
        return self.proof.verdict

    def to_dict(self) -> dict:
        return {**self.proof.to_dict(), "hub": self.hub.to_dict()}

    def to_text(self) -> str:
        from ..printing import size_text

        first, *rest = self.proof.to_text().splitlines()
        by = {"sha256": [f.name for f in self.hub.files if f.check == Check.HUB_SHA256],
              "git blob id": [f.name for f in self.hub.files if f.check == Check.HUB_GIT_OID]}
        files = (f"  files        {len(self.hub.files)}, each with the hash the Hub lists ("
                 + "; ".join(f"{', '.join(names)}: {what}" for what, names in by.items() if names)
                 + f"); {size_text(self.hub.fetched)} fetched, kept in {self.hub.folder}")
        return "\n".join([first, files, *rest])


def verify_remote(spec: str, against: str | None = None, *, logits: bool = True, device: str = "cpu",
                  progress: Reporter | None = None) -> RemoteProof:
    """Fetch hf://ORG/REPO[@REVISION]'s files through the store's cache (see the module) and prove them against
    `against` (None: each release on disk with their shapes). Every failure to fetch is one line."""
    hub = fetch_repo(parse(spec), progress=progress, refusal="nothing verified")
    proof = verify_file(hub.folder, against, logits=logits, device=device)
    proof.path = hub.where
    return RemoteProof(hub, proof)
