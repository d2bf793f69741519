"""The TFRecord schema, the sharded sinks, and reading their files back with TensorFlow."""

from __future__ import annotations

import glob
import gzip
import json
import os

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_text", reason="tensorflow-text is needed for the tokenizer")

# pylint: disable=wrong-import-position
from corpus import dataset, schema  # noqa: E402
from corpus.records import HARMFULNESS_TAG, METRICS_NAMESPACE, DeadLetter, Document  # noqa: E402
from transforms import sinks  # noqa: E402

TAG = HARMFULNESS_TAG
TAGGED_TEXT = f"Hello world {TAG} good mornings"
BRANCH = "safeweb"
DOCUMENT_SHARDS = 8
DEAD_LETTER_SHARDS = 3

# safety_probs are float32-exact, since the records store float32.
DOCUMENTS = [
    Document(id="doc-1", text="Plain text.", url="https://example.com/1", source="crawl"),
    Document(
        id="doc-2", text="Zürich, 東京 and émojis 🙂", metadata='{"lang": "de"}', safety_score=2,
        safety_probs=[0.0, 0.125, 0.5, 0.25, 0.0625, 0.0625], chunk_scores=[2, 1, 0],
        stage="rephrase", style="textbook", parent_id="doc-0"),
    Document(
        id="doc-3", text=TAGGED_TEXT, safety_score=5, safety_probs=[0, 0, 0, 0, 0.5, 0.5],
        chunk_scores=[5], stage="tagged", tag_count=1),
    Document(id="doc-4", text=""),
    Document(id="doc-5", text="Last one", safety_score=0, chunk_scores=[0, 0]),
]
DEAD_LETTERS = [
    DeadLetter(stage="read", reason="invalid_json", payload="{not json", source="a.jsonl"),
    DeadLetter(stage="gate", reason="still_unsafe", id="doc-9", payload="bad", detail='{"s": 5}'),
    DeadLetter(stage="score", reason="empty_text", id="doc-8"),
]


def _write(output_dir: str) -> dict:
  """Runs both sinks into `output_dir`; returns the run's counters by name."""
  pipeline = test_pipeline.TestPipeline()
  document_paths = (
      pipeline | "Documents" >> beam.Create(DOCUMENTS)
      | sinks.WriteDocuments(output_dir, BRANCH, DOCUMENT_SHARDS))
  dead_letter_paths = (
      pipeline | "DeadLetters" >> beam.Create(DEAD_LETTERS)
      | sinks.WriteDeadLetters(output_dir, DEAD_LETTER_SHARDS))
  assert_that(
      document_paths,
      equal_to([
          os.path.join(output_dir, BRANCH, f"part-{shard:05d}-of-00008.tfrecord.gz")
          for shard in range(DOCUMENT_SHARDS)
      ] + [os.path.join(output_dir, "samples", f"{BRANCH}.json")]),
      label="AllDocumentShards")
  assert_that(
      dead_letter_paths,
      equal_to([
          os.path.join(output_dir, "dead_letter", f"part-{shard:05d}-of-00003.jsonl.gz")
          for shard in range(DEAD_LETTER_SHARDS)
      ]),
      label="AllDeadLetterShards")
  result = pipeline.run()
  result.wait_until_finish()
  counters = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]
  return {counter.key.metric.name: counter.committed for counter in counters}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The same input written by two pipeline runs into two folders: [(folder, counters)]."""
  return [
      (str(folder), _write(str(folder)))
      for folder in (tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second"))
  ]


@pytest.fixture(scope="module")
def output_dirs(runs):
  return [folder for folder, _ in runs]


def test_records_written_are_counted(runs):
  _, counters = runs[0]
  assert counters[f"write.{BRANCH}"] == len(DOCUMENTS)
  assert counters["write.dead_letter"] == len(DEAD_LETTERS)


def test_failed_shard_leaves_no_file(tmp_path):
  def write_then_fail(file_handle, payload):
    file_handle.write(payload)
    raise IOError("disk full")

  failing_format = sinks.TFRECORD_FORMAT._replace(write_payload=write_then_fail)
  # pylint: disable-next=protected-access
  write_shard = sinks._WriteShardFile(str(tmp_path), failing_format, label=BRANCH)
  with pytest.raises(IOError, match="disk full"):
    list(write_shard.process((0, {"records": [("doc-1", b"payload")], "shard": [0]}), 1))
  assert os.listdir(tmp_path) == []


def _document_from_tf(example) -> Document:
  fields = {}
  for spec in schema.FEATURES:
    value = example[spec.name].numpy()
    if spec.kind == schema.BYTES:
      fields[spec.name] = value.decode("utf-8")
    elif spec.var_len:
      fields[spec.name] = value.tolist()
    else:
      fields[spec.name] = int(value)
  return Document(**fields)


def _documents_pattern(output_dir: str) -> str:
  return os.path.join(output_dir, BRANCH, "part-*.tfrecord.gz")


def _relative_files(output_dir: str):
  return sorted(
      os.path.relpath(path, output_dir)
      for path in glob.glob(os.path.join(output_dir, "**", "*"), recursive=True)
      + glob.glob(os.path.join(output_dir, "**", ".*"), recursive=True)
      if os.path.isfile(path))


def test_documents_read_back_with_tf_data(output_dirs):
  examples = list(dataset.make_dataset(_documents_pattern(output_dirs[0])))
  read_back = sorted((_document_from_tf(example) for example in examples), key=lambda d: d.id)
  assert read_back == sorted(DOCUMENTS, key=lambda d: d.id)


def test_batched_dataset_gives_ragged_lists(output_dirs):
  batches = list(dataset.make_dataset(_documents_pattern(output_dirs[0]), batch_size=10))
  assert len(batches) == 1
  assert batches[0]["id"].shape == [len(DOCUMENTS)]
  assert isinstance(batches[0]["safety_probs"], tf.RaggedTensor)
  assert sorted(batches[0]["chunk_scores"].row_lengths().numpy().tolist()) == [0, 0, 1, 2, 3]


def test_two_runs_write_byte_identical_files(output_dirs):
  first, second = output_dirs
  files = _relative_files(first)
  assert files == _relative_files(second)
  assert not [name for name in files if name.endswith(".tmp")]
  for name in files:
    with open(os.path.join(first, name), "rb") as a, open(os.path.join(second, name), "rb") as b:
      assert a.read() == b.read(), name


def test_every_shard_is_written_and_gzip_header_has_no_mtime(output_dirs):
  shard_paths = sorted(glob.glob(_documents_pattern(output_dirs[0])))
  assert len(shard_paths) == DOCUMENT_SHARDS
  record_counts = []
  for path in shard_paths:
    with open(path, "rb") as shard_file:
      header = shard_file.read(10)
    assert header[:2] == b"\x1f\x8b" and header[4:8] == b"\0\0\0\0"  # gzip, mtime 0
    record_counts.append(sum(1 for _ in tf.data.TFRecordDataset(path, compression_type="GZIP")))
  assert sum(record_counts) == len(DOCUMENTS)
  assert 0 in record_counts  # 5 documents in 8 shards: some are empty, and still exist


def test_records_in_a_shard_are_sorted_by_id(output_dirs):
  for path in glob.glob(_documents_pattern(output_dirs[0])):
    ids = [
        schema.example_bytes_to_document(record.numpy()).id
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP")
    ]
    assert ids == sorted(ids)


def test_dead_letters_read_back_as_jsonl(output_dirs):
  paths = sorted(glob.glob(os.path.join(output_dirs[0], "dead_letter", "part-*.jsonl.gz")))
  assert len(paths) == DEAD_LETTER_SHARDS
  lines = []
  for path in paths:
    with gzip.open(path, "rt", encoding="utf-8") as jsonl:
      lines.extend(jsonl.read().splitlines())
  assert sorted(lines) == sorted(dead_letter.to_json() for dead_letter in DEAD_LETTERS)
  first = json.loads(min(lines))
  assert {"id", "text", "stage", "reason"} <= set(first)


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda doc: doc.id)
def test_example_bytes_round_trip(doc):
  assert schema.example_bytes_to_document(schema.document_to_example_bytes(doc)) == doc


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda doc: doc.id)
def test_tensorflow_parses_our_bytes_identically(doc):
  data = schema.document_to_example_bytes(doc)
  example = tf.train.Example.FromString(data)
  assert example.SerializeToString(deterministic=True) == data
  assert example.features.feature["text"].bytes_list.value == [doc.text.encode("utf-8")]
  assert list(example.features.feature["safety_probs"].float_list.value) == doc.safety_probs
  assert list(example.features.feature["chunk_scores"].int64_list.value) == doc.chunk_scores
  assert example.features.feature["tag_count"].int64_list.value == [doc.tag_count]


def _tagged_token_ids(output_dir: str, **kwargs):
  examples = dataset.make_dataset(_documents_pattern(output_dir), **kwargs)
  for example in examples:
    if example["id"].numpy() == b"doc-3":
      return example[dataset.TOKEN_IDS].numpy().tolist()
  raise AssertionError("doc-3 not read back")


def _train_sentencepiece(tmp_path, **trainer_options) -> str:
  sentencepiece = pytest.importorskip("sentencepiece")
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(
      "\n".join(["Hello world, good mornings to all.", "Plain text and last one.",
                 "The world says good morning and hello."] * 20), encoding="utf-8")
  prefix = str(tmp_path / "spm")
  sentencepiece.SentencePieceTrainer.train(
      input=str(corpus), model_prefix=prefix, vocab_size=60, hard_vocab_limit=False,
      character_coverage=1.0, minloglevel=2, **trainer_options)
  return prefix + ".model"


def test_sentencepiece_tokenizer_keeps_tag_as_one_id(output_dirs, tmp_path):
  import sentencepiece  # pylint: disable=import-outside-toplevel
  model_path = _train_sentencepiece(tmp_path)
  processor = sentencepiece.SentencePieceProcessor(model_file=model_path)
  tag_id = processor.get_piece_size()  # the model has no tag piece: one past its vocabulary
  token_ids = _tagged_token_ids(output_dirs[0], tokenizer=model_path)
  assert token_ids.count(tag_id) == 1
  before, after = token_ids[:token_ids.index(tag_id)], token_ids[token_ids.index(tag_id) + 1:]
  assert processor.decode(before) == "Hello world"
  assert processor.decode(after) == "good mornings"


def test_sentencepiece_tag_in_vocabulary_uses_its_id(output_dirs, tmp_path):
  import sentencepiece  # pylint: disable=import-outside-toplevel
  model_path = _train_sentencepiece(tmp_path, user_defined_symbols=[TAG])
  tag_id = sentencepiece.SentencePieceProcessor(model_file=model_path).piece_to_id(TAG)
  token_ids = _tagged_token_ids(output_dirs[0], tokenizer=model_path)
  assert token_ids.count(tag_id) == 1


def test_wordpiece_tokenizer_keeps_tag_as_one_id(output_dirs, tmp_path):
  vocab = ["[UNK]", "hello", "world", "good", "morning", "##s", "plain", "text", "."]
  vocab_path = tmp_path / "vocab.txt"
  vocab_path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
  token_ids = _tagged_token_ids(output_dirs[0], tokenizer=str(vocab_path))
  tag_id = len(vocab)  # not in the vocab: one past it
  assert [vocab[i] if i < len(vocab) else TAG for i in token_ids] == [
      "hello", "world", TAG, "good", "morning", "##s"]
  assert _tagged_token_ids(output_dirs[0], tokenizer=str(vocab_path), tag_token_id=999) == [
      1, 2, 999, 3, 4, 5]


def _write_sized(output_dir: str, documents, max_records: int, *runner_args: str,
                 max_bytes: int = sinks.DEFAULT_MAX_SHARD_BYTES, num_shards: int = 0) -> dict:
  pipeline = beam.Pipeline(options=PipelineOptions(
      ["--runner=DirectRunner", *runner_args]))
  _ = (pipeline | beam.Create(documents)
       | sinks.WriteDocuments(output_dir, BRANCH, num_shards, samples=0, max_records=max_records,
                              max_bytes=max_bytes))
  pipeline.run().wait_until_finish()
  folder = os.path.join(output_dir, BRANCH)
  return {name: open(os.path.join(folder, name), "rb").read()
          for name in sorted(os.listdir(folder))}


def test_shards_sized_from_the_data_stay_bounded_and_identical_across_runners(tmp_path):
  """--num_shards=0: 230 documents at most 25 a shard make ceil(230 / 25) = 10 shards, each near
  the bound, the same bytes on the in-process and the multi-process runner."""
  documents = [DOCUMENTS[i % len(DOCUMENTS)]._replace(id=f"sized-{i:04d}") for i in range(230)]
  first = _write_sized(str(tmp_path / "one"), documents, 25)
  second = _write_sized(str(tmp_path / "two"), documents, 25,
                        "--direct_running_mode=multi_processing", "--direct_num_workers=2")
  assert sorted(first) == [f"part-{s:05d}-of-00010.tfrecord.gz" for s in range(10)]
  assert first == second
  sizes = [sum(1 for _ in tf.data.TFRecordDataset(
      os.path.join(str(tmp_path / "one"), BRANCH, name), compression_type="GZIP"))
           for name in sorted(first)]
  assert sum(sizes) == 230 and max(sizes) <= 2 * 25, sizes
  assert sinks.shards_for((230, 10**6), 25, 10**9) == 10
  assert sinks.shards_for((10, 5 * 2**20), 25, 2**20) == 5  # the byte bound
  assert sinks.shards_for((0, 0), 25, 2**20) == 1


def _sized_documents(count: int):
  return [DOCUMENTS[i % len(DOCUMENTS)]._replace(id=f"sized-{i:04d}", text=f"{i} " * 40)
          for i in range(count)]


def test_the_byte_bound_sizes_the_shards_from_the_serialized_records(tmp_path):
  """--num_shards=0 counts each record's serialized bytes against the byte bound: 230 documents
  with a bound of a fifth of their bytes make ceil(bytes / bound) shards, whatever the record
  bound, and no shard holds much more than the bound."""
  documents = _sized_documents(230)
  size = sum(len(schema.document_to_example_bytes(doc)) for doc in documents)
  bound = size // 5
  expected = -(-size // bound)
  assert expected >= 5
  written = _write_sized(str(tmp_path), documents, 10**6, max_bytes=bound)
  assert sorted(written) == [
      f"part-{s:05d}-of-{expected:05d}.tfrecord.gz" for s in range(expected)]
  shard_bytes = [
      sum(len(record.numpy()) for record in tf.data.TFRecordDataset(
          os.path.join(str(tmp_path), BRANCH, name), compression_type="GZIP"))
      for name in sorted(written)]
  assert sum(shard_bytes) == size and max(shard_bytes) <= 2 * bound, shard_bytes


def test_a_fixed_shard_count_over_the_bounds_fails_before_writing_a_shard(tmp_path):
  """A fixed count is held to the same bounds: 230 documents in 4 shards of at most 25 records
  fail the run, with an error that names the count that holds them (ceil(230 / 25) = 10)."""
  too_large = r"shards too large: safeweb: 230 records.* in 4 shards.*--num_shards=10 or more"
  with pytest.raises(Exception, match=too_large):
    _write_sized(str(tmp_path), _sized_documents(230), 25, num_shards=4)
  assert not glob.glob(os.path.join(str(tmp_path), BRANCH, "part-*"))
  # within the bounds, the fixed count is kept
  written = _write_sized(str(tmp_path / "ten"), _sized_documents(230), 25, num_shards=12)
  assert sorted(written) == [f"part-{s:05d}-of-00012.tfrecord.gz" for s in range(12)]
