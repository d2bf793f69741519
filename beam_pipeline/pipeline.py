"""Builds the pipeline graph from the options: wiring only, no record logic.

    ReadDocuments -> ScoreSafety -> Route -> raw
                                          -> HarmfulnessTag -> tagged
                                          -> Rephrase -> SafetyGate -> safeweb
                                          -> RefuseWeb -> SafetyGate -> refuseweb
                                                 -> MoralEducation -> SafetyGate -> moral_education
    every dead letter -> dead_letter/
"""

from __future__ import annotations

import apache_beam as beam

from beam_pipeline.options import SafetyPretrainingOptions
from models.classifier.handler import OnnxSafetyModelHandler
from transforms.deadletter import DEAD_LETTER
from transforms.documents import DOCUMENTS, Document, ReadDocuments
from transforms.gate import SafetyGate
from transforms.records import WriteDeadLetters, WriteDocuments
from transforms.report import BRANCHES
from transforms.routing import RAW, REFUSE, REPHRASE, TO_TAG, Bands, Route
from transforms.scoring import ScoreSafety, document_text
from transforms.tagging import HarmfulnessTag


def classifier_handler(options: SafetyPretrainingOptions) -> OnnxSafetyModelHandler:
  return OnnxSafetyModelHandler(
      model_path=options.classifier_model, device=options.classifier_device,
      intra_op_threads=options.classifier_threads)


def generator_handler(options: SafetyPretrainingOptions):
  from models.generators.local import LocalGeneratorHandler
  return LocalGeneratorHandler(
      model_path=options.generator_model, cache_dir=options.generator_cache,
      max_new_tokens=options.max_new_tokens, temperature=options.temperature,
      top_p=options.top_p, repetition_penalty=options.repetition_penalty,
      batch_size=options.generation_batch_size,
      torch_threads=options.generator_threads or None)


def build(pipeline: beam.Pipeline, options: SafetyPretrainingOptions) -> None:
  """Adds the whole method to `pipeline`, reading and writing where the options say."""
  dead_letters = []
  documents = pipeline | "Read" >> ReadDocuments(
      options.input, text_field=options.text_field, id_field=options.id_field,
      url_field=options.url_field, source_field=options.source_field,
      max_chars=options.max_chars)
  dead_letters.append(documents[DEAD_LETTER])

  scorer = classifier_handler(options)
  scored = documents[DOCUMENTS] | "Score" >> ScoreSafety(scorer, options.window, options.overlap)
  dead_letters.append(scored[DEAD_LETTER])

  bands = Bands(
      rephrase=(options.rephrase_min_score, options.rephrase_max_score),
      refuse=(options.refuse_min_score, options.refuse_max_score),
      tag_min_score=options.tag_min_score)
  routed = scored[DOCUMENTS] | "Route" >> Route(bands)

  outputs = {"raw": routed[RAW]}
  tagged = routed[TO_TAG] | "Tag" >> HarmfulnessTag(
      options.tag_rate, options.tag_min_score, options.seed)
  outputs["tagged"] = tagged[DOCUMENTS]
  dead_letters.append(tagged[DEAD_LETTER])

  if options.generation == "on":
    from transforms.generation import MoralEducation, RefuseWeb, Rephrase, assistant_turns
    generator = generator_handler(options)

    def generate_and_gate(name, branch, transform, inputs, text_of=document_text):
      generated = inputs | name >> transform
      gated = generated[DOCUMENTS] | f"Gate{name}" >> SafetyGate(
          scorer, branch, options.gate_max_score, options.window, options.overlap, text_of)
      dead_letters.extend([generated[DEAD_LETTER], gated[DEAD_LETTER]])
      return gated[DOCUMENTS]

    outputs["safeweb"] = generate_and_gate(
        "Rephrase", "safeweb", Rephrase(generator, options.seed), routed[REPHRASE])
    outputs["refuseweb"] = generate_and_gate(
        "RefuseWeb", "refuseweb", RefuseWeb(generator, options.seed), routed[REFUSE],
        text_of=assistant_turns)
    outputs["moral_education"] = generate_and_gate(
        "MoralEducation", "moral_education", MoralEducation(generator, options.seed),
        outputs["refuseweb"])
  else:
    for branch in ("safeweb", "refuseweb", "moral_education"):
      outputs[branch] = pipeline | f"No{branch}" >> beam.Create([]).with_output_types(Document)

  for branch in BRANCHES:
    _ = outputs[branch] | f"Write{branch}" >> WriteDocuments(
        options.output, branch, options.num_shards)
  _ = (dead_letters | "AllDeadLetters" >> beam.Flatten()
       | "WriteDeadLetters" >> WriteDeadLetters(options.output, options.num_shards))
