"""Deduplication by id: of documents that share an id, one is kept, the rest are dead letters."""

from __future__ import annotations

import hashlib
import typing

import apache_beam as beam

from corpus.records import STAGE_DEDUPLICATE, Document
from transforms.deadletter import apply_step, rejected


def _document_order(document: Document) -> tuple:
  """The order of documents that share an id: the first one is kept (the same on any runner)."""
  return (document.source, document.url, document.text, document.metadata)


class _DeduplicateFn(beam.DoFn):
  """(id, documents with that id) -> the first by `_document_order`; the rest to dead letter."""

  def process(self, id_and_documents):
    _, documents = id_and_documents
    documents = sorted(documents, key=_document_order)
    kept = documents[0]
    yield kept
    for duplicate in documents[1:]:
      yield rejected(
          STAGE_DEDUPLICATE, duplicate, "duplicate_id",
          {"copies": len(documents), "kept_source": kept.source,
           "same_text": duplicate.text == kept.text,
           "kept_text_sha256": hashlib.sha256(kept.text.encode("utf-8")).hexdigest()})


def drop_duplicate_ids(documents):
  """Documents -> {DOCUMENTS: one per id (the first by source, url, text), DEAD_LETTER: the
  others (stage `deduplicate`, reason duplicate_id)}; applied in the caller's scope.

  Grouping by id also spreads the documents over workers, as a Reshuffle would.
  """
  grouped = (
      documents
      | "KeyById" >> beam.Map(lambda document: (document.id, document)).with_output_types(
          typing.Tuple[str, Document])
      | "GroupById" >> beam.GroupByKey())
  return apply_step(grouped, "DropDuplicateIds", _DeduplicateFn())
