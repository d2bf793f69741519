"""The `tf.data` reader for the TFRecord files that `transforms.sinks.WriteDocuments` writes.

It parses exactly `schema.FEATURES`, and can tokenize the text on the fly with tensorflow-text,
keeping `HARMFULNESS_TAG` as one special token. TensorFlow and tensorflow-text are
imported here only, so the pipeline itself runs without them.
"""

from __future__ import annotations

import re
import typing

import tensorflow as tf

from corpus import schema
from corpus.records import HARMFULNESS_TAG

TOKEN_IDS = "token_ids"
WORDPIECE_UNKNOWN_TOKEN = "[UNK]"


class _PieceTokenizer(typing.NamedTuple):
  """Tokenizes a 1-D string tensor of text pieces into a [pieces, None] int64 RaggedTensor."""
  tokenize: typing.Callable[[tf.Tensor], tf.RaggedTensor]
  tag_token_id: int


def _sentencepiece_tokenizer(model_path: str) -> _PieceTokenizer:
  import tensorflow_text as tf_text  # pylint: disable=import-outside-toplevel
  with tf.io.gfile.GFile(model_path, "rb") as model_file:
    tokenizer = tf_text.SentencepieceTokenizer(model=model_file.read(), out_type=tf.int32)
  tag_id = int(tokenizer.string_to_id(HARMFULNESS_TAG))
  if tokenizer.id_to_string(tag_id).numpy().decode("utf-8") != HARMFULNESS_TAG:
    tag_id = int(tokenizer.vocab_size())  # not in the model: the first id after the vocabulary

  def tokenize(pieces: tf.Tensor) -> tf.RaggedTensor:
    return tf.cast(tokenizer.tokenize(pieces), tf.int64)

  return _PieceTokenizer(tokenize, tag_id)


def _wordpiece_tokenizer(vocab_path: str) -> _PieceTokenizer:
  import tensorflow_text as tf_text  # pylint: disable=import-outside-toplevel
  with tf.io.gfile.GFile(vocab_path, "r") as vocab_file:
    vocab = [line.rstrip("\n") for line in vocab_file if line.rstrip("\n")]
  if WORDPIECE_UNKNOWN_TOKEN not in vocab:
    raise ValueError(f"WordPiece vocab {vocab_path} has no {WORDPIECE_UNKNOWN_TOKEN} token")
  # Splits on whitespace and punctuation itself (BERT-style) before WordPiece.
  tokenizer = tf_text.FastWordpieceTokenizer(
      vocab=vocab, token_out_type=tf.int64, unknown_token=WORDPIECE_UNKNOWN_TOKEN)
  tag_id = vocab.index(HARMFULNESS_TAG) if HARMFULNESS_TAG in vocab else len(vocab)

  def tokenize(pieces: tf.Tensor) -> tf.RaggedTensor:
    return tokenizer.tokenize(tf_text.case_fold_utf8(pieces))

  return _PieceTokenizer(tokenize, tag_id)


def load_tokenizer(path: str) -> _PieceTokenizer:
  """A SentencePiece model (`.model`) or a WordPiece vocab (`.txt`, one token a line).

  The tag's id is its id in the vocabulary if the vocabulary has it, else the vocabulary size
  (one past the last id; a model reading these ids needs an embedding row for it).
  """
  if path.endswith(".model"):
    return _sentencepiece_tokenizer(path)
  if path.endswith(".txt"):
    return _wordpiece_tokenizer(path)
  raise ValueError(f"tokenizer must be a SentencePiece .model or a WordPiece .txt vocab: {path}")


def tokenize_with_tag(
    text: tf.Tensor, tokenize: typing.Callable[[tf.Tensor], tf.RaggedTensor],
    tag_token_id: int) -> tf.Tensor:
  """Token ids of a scalar string, with each harmfulness tag as the single id `tag_token_id`."""
  import tensorflow_text as tf_text  # pylint: disable=import-outside-toplevel
  tag_pattern = re.escape(HARMFULNESS_TAG)
  pieces = tf_text.regex_split(
      tf.reshape(text, [1]), delim_regex_pattern=tag_pattern,
      keep_delim_regex_pattern=tag_pattern)[0]
  num_pieces = tf.shape(pieces, out_type=tf.int64)[0]
  piece_tokens = tokenize(pieces)
  tag_tokens = tf.RaggedTensor.from_row_lengths(
      tf.fill([num_pieces], tf.constant(tag_token_id, tf.int64)),
      tf.ones([num_pieces], tf.int64))
  # Row i of the candidates is piece i's tokens, row num_pieces + i its tag id; pick per piece.
  candidates = tf.concat([piece_tokens, tag_tokens], axis=0)
  piece_range = tf.range(num_pieces)
  chosen_rows = tf.where(
      tf.equal(pieces, HARMFULNESS_TAG), piece_range + num_pieces, piece_range)
  return tf.gather(candidates, chosen_rows).flat_values


def parse_example(serialized: tf.Tensor) -> typing.Dict[str, tf.Tensor]:
  """One serialized Example as a dict of dense tensors (var-len features as 1-D tensors)."""
  parsed = tf.io.parse_single_example(serialized, schema.tf_feature_spec())
  return {
      name: tf.sparse.to_dense(value) if isinstance(value, tf.sparse.SparseTensor) else value
      for name, value in parsed.items()
  }


def make_dataset(
    file_pattern: typing.Union[str, typing.Sequence[str]], *, batch_size: int | None = None,
    tokenizer: str | None = None, tag_token_id: int | None = None,
    shuffle_files: bool = False) -> tf.data.Dataset:
  """A dataset of parsed examples from gzip TFRecord files, in file-name order by default.

  With `tokenizer` (see `load_tokenizer`), each example also gets `token_ids` (int64), the
  text's tokens with each harmfulness tag as `tag_token_id` (default: the tokenizer's tag id).
  With `batch_size`, examples are batched and the var-len features and `token_ids` come as
  [batch, None] RaggedTensors.
  """
  files = tf.data.Dataset.list_files(file_pattern, shuffle=shuffle_files)
  dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
  dataset = dataset.map(parse_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if tokenizer is not None:
    piece_tokenizer = load_tokenizer(tokenizer)
    tag_id = piece_tokenizer.tag_token_id if tag_token_id is None else tag_token_id

    def add_token_ids(example):
      return {
          **example,
          TOKEN_IDS: tokenize_with_tag(example["text"], piece_tokenizer.tokenize, tag_id),
      }

    dataset = dataset.map(add_token_ids, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if batch_size is not None:
    dataset = dataset.ragged_batch(batch_size)
  return dataset
