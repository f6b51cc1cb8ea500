"""What both batch engines share: the run's plan, its tally of records, and the usage error.

The CLI (``stylefleet.tools.batch.run``) builds the plan and drives an engine; the HTTP engine (in
``run``) and the Ray Data engine (``stylefleet.tools.batch.raydata``) both take it from here, so
neither engine imports the other's module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stylefleet.errors import InsufficientStorage
from stylefleet.manifest import ManifestIndex, ManifestWriter, Record, item_key
from stylefleet.tools.batch.inputs import Item
from stylefleet.tools.batch.progress import Progress


class UsageError(Exception):
    """Stops the run with exit status 2."""


@dataclass
class Plan:
    """Everything both engines need to know about the run."""

    style: str
    fields: dict[str, str]  # form fields sent with every image (params, format, variant, client_id)
    key_params: dict[str, str]  # fields + a checksum of each extra file: the resume key's params
    extra_files: dict[str, bytes]
    items: list[Item]
    outputs: dict[str, str]  # item.rel -> output path relative to the output root
    force: bool = False

    def params_of(self, item: Item) -> dict[str, str]:
        """The resume key's and the manifest's params: the run's, and a prompt line's own."""
        return {**self.key_params, **item.prompt.fields} if item.prompt else dict(self.key_params)

    def key(self, item: Item, sha: str) -> tuple[str, str, str, str]:
        return item_key(item.rel, sha, self.style, self.params_of(item))

    def record(self, item: Item, sha: str, **kwargs: object) -> Record:
        return Record(input=item.rel, input_sha256=sha, style=self.style, params=self.params_of(item), **kwargs)  # type: ignore[arg-type]


@dataclass
class Tally:
    """The final record of every item of this run (skipped ones included), and the counts."""

    progress: Progress
    writer: ManifestWriter
    index: ManifestIndex
    records: dict[str, Record] = field(default_factory=dict)

    def skipped(self, record: Record) -> None:
        self.records[record.input] = record
        self.progress.update(record.status, skipped=True)

    def finished(self, record: Record) -> None:
        """Count and record an item. The output storage full or unwritable (its output, or the
        manifest line, could not be written): raises InsufficientStorage, which stops the run with
        exit status 3; the item is counted, failed, either way."""
        self.records[record.input] = record
        self.index.add(record)
        self.progress.update(record.status)
        self.writer.write(record)
        if record.error is not None and record.error.get("code") == InsufficientStorage.code:
            raise InsufficientStorage(record.error.get("message", ""))
