"""The sinks: documents as gzip TFRecord files of `tf.train.Example`, dead letters as gzip JSONL.

Both write the same way, so the files are byte-identical across runs and runners for the same
input: each record goes to the shard given by a stable hash of its key, every shard index is
written (an empty shard is an empty file), the records in a shard are sorted, and a shard is
written under a temporary name in its folder and renamed when complete, so a failed run leaves
no partial file under a final name. A shard is sorted in memory, so it is bounded in records and
bytes: `num_shards=0` (the default) sizes the shard count from the data to keep each shard within
both bounds, and a fixed count that would put more in a shard fails the run with an error that
names the count it takes, before any shard is sorted.

The document sink also writes a few sample documents per branch for the report card, to
`{output_dir}/samples/<branch>.json`, chosen by a hash of their id so every runner picks the same.
Each sink outputs the paths of every file it wrote: the graph's CommitOutput moves exactly those.
"""

from __future__ import annotations

import hashlib
import json
import typing
import uuid

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil

from corpus import schema
from corpus.records import DEAD_LETTER, SAMPLES_DIR, DeadLetter, Document
from transforms.deadletter import count

STAGE_WRITE = "write"
DEFAULT_SAMPLES = 3
SAMPLE_CHARS = 1500  # the text kept in a sample; the report card shows this much


class _ShardFormat(typing.NamedTuple):
  """How one kind of record is sharded, sorted and framed in a shard file."""
  suffix: str
  # record -> (shard key, sort key, payload bytes); records sort by (sort key, payload).
  encode: typing.Callable[[typing.Any], typing.Tuple[str, str, bytes]]
  write_payload: typing.Callable[[typing.BinaryIO, bytes], None]


def _encode_document(doc: Document) -> typing.Tuple[str, str, bytes]:
  return doc.id, doc.id, schema.document_to_example_bytes(doc)


def _encode_dead_letter(dead_letter: DeadLetter) -> typing.Tuple[str, str, bytes]:
  # Keyed by the whole line: unreadable records have no id and would all land in one shard.
  # Called through the class: a row decoded by a worker that lacks the type's registration (the
  # multi-process runner) is a generated NamedTuple with the same fields, but not a DeadLetter.
  line = DeadLetter.to_json(dead_letter)
  return line, line, line.encode("utf-8")


def _write_jsonl_line(file_handle: typing.BinaryIO, payload: bytes) -> None:
  file_handle.write(payload + b"\n")


TFRECORD_FORMAT = _ShardFormat(".tfrecord.gz", _encode_document, _TFRecordUtil.write_record)
JSONL_FORMAT = _ShardFormat(".jsonl.gz", _encode_dead_letter, _write_jsonl_line)


def shard_for(key: str, num_shards: int) -> int:
  """The shard of a record key: a stable hash, the same in every process and on every runner."""
  digest = hashlib.sha256(key.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") % num_shards


def shard_name(shard: int, num_shards: int, suffix: str) -> str:
  return f"part-{shard:05d}-of-{num_shards:05d}{suffix}"


# A shard's bounds, on average (the hash spreads records evenly, so a shard is within a few
# percent of it): --num_shards=0 takes as many shards as it takes to keep each within both.
DEFAULT_MAX_SHARD_RECORDS = 50_000
DEFAULT_MAX_SHARD_BYTES = 256 * 1024 * 1024


def shards_for(totals: typing.Tuple[int, int], max_records: int, max_bytes: int) -> int:
  """The shard count sized from the data: (records, payload bytes) -> shards within both bounds."""
  records, size = totals
  return max(1, -(-records // max_records), -(-size // max_bytes))


SHARDS_TOO_LARGE = "shards too large"  # how ShardTooLarge's message begins


class ShardTooLarge(ValueError):
  """A fixed shard count would put more records or bytes in a shard than its bounds allow."""


def fixed_shards(totals: typing.Tuple[int, int], num_shards: int, max_records: int,
                 max_bytes: int, label: str) -> int:
  """`num_shards`, when it keeps each shard within both bounds on average; else ShardTooLarge,
  naming the count that would (the one --num_shards=0 picks). The bounds are what one worker
  sorts in memory: an error here, before any shard is grouped, instead of a worker lost to memory.
  """
  records, size = totals
  needed = shards_for(totals, max_records, max_bytes)
  if needed > num_shards:
    raise ShardTooLarge(
        f"{SHARDS_TOO_LARGE}: {label}: {records} records, {size} bytes in {num_shards} shards is "
        f"{-(-records // num_shards)} records, {-(-size // num_shards)} bytes a shard, over the "
        f"bounds of {max_records} records and {max_bytes} bytes (--max_shard_records, "
        f"--max_shard_mb): pass --num_shards=0 (sized from the data) or --num_shards={needed} "
        f"or more, or raise the bounds")
  return num_shards


class _SumRecordsAndBytes(beam.CombineFn):
  """(records, payload bytes) of a PCollection of (shard key, (sort key, payload))."""

  def create_accumulator(self):
    return 0, 0

  def add_input(self, accumulator, element):
    _, (_, payload) = element
    return accumulator[0] + 1, accumulator[1] + len(payload)

  def merge_accumulators(self, accumulators):
    records, size = 0, 0
    for accumulator in accumulators:
      records += accumulator[0]
      size += accumulator[1]
    return records, size

  def extract_output(self, accumulator):
    return accumulator


class _WriteShardFile(beam.DoFn):
  """Writes one shard's sorted records under a temporary name, then renames it into place."""

  def __init__(self, directory: str, shard_format: _ShardFormat, label: str):
    self._directory = directory
    self._format = shard_format
    self._label = label

  def process(self, shard_and_groups, num_shards: int):
    shard, groups = shard_and_groups
    entries = sorted(groups["records"])
    name = shard_name(shard, num_shards, self._format.suffix)
    final_path = FileSystems.join(self._directory, name)
    # Hidden and without the final suffix, so no `part-*` pattern reads a half-written shard.
    temp_path = FileSystems.join(self._directory, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
      with FileSystems.create(temp_path, compression_type=CompressionTypes.GZIP) as file_handle:
        for _, payload in entries:
          self._format.write_payload(file_handle, payload)
      FileSystems.rename([temp_path], [final_path])
    except Exception:
      if FileSystems.exists(temp_path):
        FileSystems.delete([temp_path])
      raise
    count(STAGE_WRITE, self._label, len(entries))
    yield final_path


class _WriteShards(beam.PTransform):
  """Shards, sorts and writes records in `shard_format`; outputs the written file paths.

  `num_shards` 0 sizes the shard count from the data (shards_for: at most `max_records` records
  and `max_bytes` bytes a shard), so a shard sorted in one worker's memory stays bounded however
  large the input; the count is computed from the data, so every runner picks the same one. A
  fixed `num_shards` is held to the same bounds (fixed_shards).
  """

  def __init__(self, directory: str, num_shards: int, shard_format: _ShardFormat, label: str,
               max_records: int = DEFAULT_MAX_SHARD_RECORDS,
               max_bytes: int = DEFAULT_MAX_SHARD_BYTES):
    super().__init__()
    if num_shards < 0:
      raise ValueError(f"num_shards must be 0 (sized from the data) or more, got {num_shards}")
    self._directory = directory
    self._num_shards = num_shards
    self._format = shard_format
    self._label = label
    self._max_records = max_records
    self._max_bytes = max_bytes

  def expand(self, records):
    encode = self._format.encode

    def encoded(record):
      shard_key, sort_key, payload = encode(record)
      return shard_key, (sort_key, payload)

    def key_by_shard(entry, num_shards):
      shard_key, value = entry
      return shard_for(shard_key, num_shards), value

    entries = records | "Encode" >> beam.Map(encoded).with_output_types(
        typing.Tuple[str, typing.Tuple[str, bytes]])
    totals = entries | "RecordsAndBytes" >> beam.CombineGlobally(_SumRecordsAndBytes())
    if self._num_shards:
      num_shards = totals | "NumShards" >> beam.Map(
          fixed_shards, self._num_shards, self._max_records, self._max_bytes, self._label)
    else:
      num_shards = totals | "NumShards" >> beam.Map(
          shards_for, self._max_records, self._max_bytes)
    shards = beam.pvalue.AsSingleton(num_shards)
    keyed = entries | "KeyByShard" >> beam.Map(key_by_shard, shards).with_output_types(
        typing.Tuple[int, typing.Tuple[str, bytes]])
    # Every shard index takes part in the grouping, so empty shards are written too.
    shard_indices = num_shards | "ShardIndices" >> beam.FlatMap(
        lambda n: [(shard, shard) for shard in range(n)]).with_output_types(
            typing.Tuple[int, int])
    return (
        {"records": keyed, "shard": shard_indices}
        | "GroupByShard" >> beam.CoGroupByKey()
        | "WriteShard" >> beam.ParDo(
            _WriteShardFile(self._directory, self._format, self._label), shards))


def _sample_entry(document: Document) -> typing.Tuple[str, str]:
  """(hash of the id, the sample as JSON): the smallest hashes are the branch's samples."""
  text = document.text
  sample = {
      "id": document.id, "source": document.source, "url": document.url,
      "safety_score": document.safety_score, "stage": document.stage, "style": document.style,
      "parent_id": document.parent_id, "tag_count": document.tag_count,
      "text": text[:SAMPLE_CHARS], "text_chars": len(text),
  }
  digest = hashlib.sha256(document.id.encode("utf-8")).hexdigest()
  return digest, json.dumps(sample, ensure_ascii=False, sort_keys=True)


def write_json_file(value: typing.Any, path: str) -> str:
  """Writes `value` as one indented JSON file (sorted keys, UTF-8), as the report card's sample
  files are; returns its path."""
  with FileSystems.create(path) as file_handle:
    file_handle.write(
        (json.dumps(value, ensure_ascii=False, indent=1, sort_keys=True) + "\n").encode("utf-8"))
  return path


def _write_samples(entries: typing.List[typing.Tuple[str, str]], path: str) -> str:
  return write_json_file([json.loads(sample) for _, sample in sorted(entries)], path)


class WriteDocuments(beam.PTransform):
  """Writes one branch's Documents as `{output_dir}/{branch}/part-NNNNN-of-NNNNN.tfrecord.gz`.

  Outputs the paths of the written files; counts records under `write.<branch>` (progress only:
  the report's figures are tallied from the data, beam_pipeline.report). With `samples` > 0, also
  writes that many sample documents (the ones with the smallest hash of their id, text cut at
  SAMPLE_CHARS) as a JSON list in `{output_dir}/samples/{branch}.json`.
  """

  def __init__(self, output_dir: str, branch: str, num_shards: int,
               samples: int = DEFAULT_SAMPLES, **shard_bounds):
    super().__init__()
    self._branch = branch
    self._samples = samples
    self._samples_path = FileSystems.join(output_dir, SAMPLES_DIR, f"{branch}.json")
    self._write = _WriteShards(
        FileSystems.join(output_dir, branch), num_shards, TFRECORD_FORMAT, label=branch,
        **shard_bounds)

  def expand(self, documents):
    shards = documents | self._write
    if self._samples <= 0:
      return shards
    samples = (
        documents
        | "SampleEntries" >> beam.Map(_sample_entry)
        | "Samples" >> beam.combiners.Top.Smallest(self._samples)
        | "WriteSamples" >> beam.Map(_write_samples, self._samples_path))
    return (shards, samples) | "WrittenFiles" >> beam.Flatten()


class WriteDeadLetters(beam.PTransform):
  """Writes DeadLetters as JSONL lines in `{output_dir}/dead_letter/part-NNNNN-of-NNNNN.jsonl.gz`.

  The JSONL reader reads them back. Outputs the written paths; counts under `write.dead_letter`.
  """

  def __init__(self, output_dir: str, num_shards: int, **shard_bounds):
    super().__init__()
    self._write = _WriteShards(
        FileSystems.join(output_dir, DEAD_LETTER), num_shards, JSONL_FORMAT, label=DEAD_LETTER,
        **shard_bounds)

  def expand(self, dead_letters):
    return dead_letters | self._write


def _encode_json_line(line: str) -> typing.Tuple[str, str, bytes]:
  return line, line, line.encode("utf-8")


JSON_LINES_FORMAT = _ShardFormat(".jsonl.gz", _encode_json_line, _write_jsonl_line)


class WriteJsonLines(beam.PTransform):
  """Writes JSON lines (str) in `{output_dir}/{name}/part-NNNNN-of-NNNNN.jsonl.gz`, sharded and
  sorted like the other sinks. Outputs the written paths; counts under `write.<name>`."""

  def __init__(self, output_dir: str, name: str, num_shards: int, **shard_bounds):
    super().__init__()
    self._write = _WriteShards(
        FileSystems.join(output_dir, name), num_shards, JSON_LINES_FORMAT, label=name,
        **shard_bounds)

  def expand(self, lines):
    return lines | self._write
