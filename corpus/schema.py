"""The TFRecord feature schema: the one place that says what a written record holds.

Every `Document` field (corpus/records.py) is one feature of a `tf.train.Example`, under the
field's name, its kind given by the field's type: `FEATURES` is derived from `Document`, so a new
field is a new feature. The writer (`document_to_example_bytes`) and the `tf.data` reader
(`tf_feature_spec`, used by `corpus.dataset`) both follow `FEATURES`, so they cannot drift
apart.

The Example is built with protobuf message classes declared here, with the same package and
field numbers as TensorFlow's `example.proto` and `feature.proto`, so writing needs no
TensorFlow; the bytes are the ones `tf.train.Example.SerializeToString(deterministic=True)`
gives. Strings are stored as UTF-8 bytes, floats as float32 (as TensorFlow stores them).
"""

from __future__ import annotations

import typing

from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory

from corpus.records import Document

BYTES = "bytes"
INT64 = "int64"
FLOAT = "float"


class Feature(typing.NamedTuple):
  """One feature of the written records: its name, value kind, and whether it is a list."""
  name: str
  kind: str  # BYTES, INT64 or FLOAT
  var_len: bool = False  # False: exactly one value; True: any number of values


# A Document field's type -> its feature's kind and whether it is a list.
_FEATURE_OF_TYPE = {
    str: (BYTES, False),
    int: (INT64, False),
    typing.List[float]: (FLOAT, True),  # safety_probs: 6 values once scored, none before
    typing.List[int]: (INT64, True),  # chunk_scores; deciding_span, [start, end)
}
# One feature per Document field, in its order: a field added to Document is written and read.
FEATURES: typing.Tuple[Feature, ...] = tuple(
    Feature(name, *_FEATURE_OF_TYPE[field_type])
    for name, field_type in typing.get_type_hints(Document).items())


def _example_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
  """TensorFlow's feature.proto and example.proto messages, with their field numbers."""
  field = descriptor_pb2.FieldDescriptorProto
  proto = descriptor_pb2.FileDescriptorProto(
      name="safety_pretraining/tf_example.proto", package="tensorflow", syntax="proto3")

  def add_list_message(name: str, value_type: int, packed: bool):
    message = proto.message_type.add(name=name)
    value = message.field.add(name="value", number=1, type=value_type, label=field.LABEL_REPEATED)
    if packed:
      value.options.packed = True

  add_list_message("BytesList", field.TYPE_BYTES, packed=False)
  add_list_message("FloatList", field.TYPE_FLOAT, packed=True)
  add_list_message("Int64List", field.TYPE_INT64, packed=True)

  feature = proto.message_type.add(name="Feature")
  feature.oneof_decl.add(name="kind")
  for number, (name, type_name) in enumerate(
      [("bytes_list", "BytesList"), ("float_list", "FloatList"), ("int64_list", "Int64List")],
      start=1):
    feature.field.add(
        name=name, number=number, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
        type_name=f".tensorflow.{type_name}", oneof_index=0)

  features = proto.message_type.add(name="Features")
  entry = features.nested_type.add(name="FeatureEntry")
  entry.options.map_entry = True
  entry.field.add(name="key", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
  entry.field.add(
      name="value", number=2, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
      type_name=".tensorflow.Feature")
  features.field.add(
      name="feature", number=1, type=field.TYPE_MESSAGE, label=field.LABEL_REPEATED,
      type_name=".tensorflow.Features.FeatureEntry")

  example = proto.message_type.add(name="Example")
  example.field.add(
      name="features", number=1, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
      type_name=".tensorflow.Features")
  return proto


# A private pool, so these never clash with TensorFlow's own classes in the same process.
_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_example_file_descriptor())
Example = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("tensorflow.Example"))

_LIST_FIELD = {BYTES: "bytes_list", INT64: "int64_list", FLOAT: "float_list"}


def document_to_example_bytes(doc: Document) -> bytes:
  """The document as a serialized `tf.train.Example`, the same bytes on every run."""
  example = Example()
  for spec in FEATURES:
    field_value = getattr(doc, spec.name)
    values = list(field_value) if spec.var_len else [field_value]
    if spec.kind == BYTES:
      values = [value.encode("utf-8") for value in values]
    value_list = getattr(example.features.feature[spec.name], _LIST_FIELD[spec.kind])
    value_list.SetInParent()  # an empty list still says its kind
    value_list.value.extend(values)
  return example.SerializeToString(deterministic=True)


def example_bytes_to_document(data: bytes) -> Document:
  """The document back from `document_to_example_bytes` (floats come back as float32)."""
  example = Example.FromString(data)
  fields = {}
  for spec in FEATURES:
    if spec.name not in example.features.feature:
      continue  # the Document default
    values = list(getattr(example.features.feature[spec.name], _LIST_FIELD[spec.kind]).value)
    if spec.kind == BYTES:
      values = [value.decode("utf-8") for value in values]
    if spec.var_len:
      fields[spec.name] = values
    elif len(values) == 1:
      fields[spec.name] = values[0]
    else:
      raise ValueError(f"feature {spec.name!r} should hold one value, holds {len(values)}")
  return Document(**fields)


def tf_feature_spec() -> dict:
  """The features dict for `tf.io.parse_single_example`; var-len features parse as sparse."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  dtypes = {BYTES: tf.string, INT64: tf.int64, FLOAT: tf.float32}
  return {
      spec.name: (
          tf.io.VarLenFeature(dtypes[spec.kind])
          if spec.var_len else tf.io.FixedLenFeature([], dtypes[spec.kind]))
      for spec in FEATURES
  }
