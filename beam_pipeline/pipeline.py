"""Builds the pipeline graph from the options: wiring only, no record logic.

    ReadDocuments -> ScoreSafety -> Route -> raw
                                          -> HarmfulnessTag -> tagged
                                          -> Rephrase -> SafetyGate -> safeweb
                                          -> RefuseWeb -> SafetyGate -> refuseweb
                                                 -> MoralEducation -> SafetyGate -> moral_education
    every dead letter -> dead_letter/
    tallies of every stage -> RunStatistics -> BuildReport -> CommitOutput (after every sink)

Every sink writes under `<output>/.staging/<run id>/`; the last stage, CommitOutput, moves the
files into place and writes report.json and report.html, so the job finishes its own run on any
runner, also when nothing waits for it (a template launch).
"""

from __future__ import annotations

import importlib

import apache_beam as beam

from beam_pipeline import report as run_report
from beam_pipeline.options import QUALITY_HELP, SafetyPretrainingOptions
from beam_pipeline.output_folder import CommitOutput, new_run_id, staging_path
from beam_pipeline.report import Tallies
from corpus.records import (BRANCHES, DEAD_LETTER, DOCUMENTS, GENERATED_BRANCHES,
                            GENERATION_STAGES, MORAL_EDUCATION, RAW, REFUSEWEB, SAFEWEB,
                            STAGE_ANNOTATE, STAGE_VALIDATE, TAGGED, Document)
from models.classifier import artifacts
from models.classifier.handler import OnnxSafetyModelHandler
from transforms.annotate import Annotate
from transforms.dialogue import assistant_turns
from transforms.gate import SafetyGate
from transforms.generation import REVIEWS, MoralEducation, RefuseWeb, Rephrase
from transforms.progress import LogProgress
from transforms.quality import QualityGate, TextEncoder
from transforms.quality_checks import CHECKS, QualitySettings
from transforms.quality_samples import WriteQualitySamples
from transforms.reading import MATCHED_FILES, ReadDocuments
from transforms.routing import REFUSE, REPHRASE, TO_TAG, Bands, Route
from transforms.scoring import ScoreSafety, document_text
from transforms.sinks import WriteDeadLetters, WriteDocuments, WriteJsonLines
from transforms.tagging import HarmfulnessTag, StripTags

# --generator -> (module, class) of its backend, imported only when chosen; each backend builds
# itself from the options (`from_options`, models/generators/backend.py's ChatBackend).
GENERATORS = {
    "local": ("models.generators.local", "LocalGeneratorHandler"),
    "vllm": ("models.generators.vllm_backend", "VllmGeneratorHandler"),
    "openai": ("models.generators.openai_endpoint", "OpenAIEndpointHandler"),
}


def classifier_handler(options: SafetyPretrainingOptions, pipeline: beam.Pipeline):
  """The classifier's ModelHandler: ONNX int8 on CPU, or batched PyTorch on a GPU.

  The ONNX model folder is settled here, once, where the graph is built, as the workers will
  read it (`artifacts.settle_model`: without --classifier_model the default model is built
  here; --window is checked against it; a local model is staged under a remote temp location
  for workers on other machines). The result is written back to --classifier_model, in
  `options` and in the pipeline's own copy of them (beam.Pipeline deep-copies its options), so
  the job's recorded options name the model its workers read, and every reader takes it: the
  ONNX scorer and gates, and the quality gate's encoder (`quality_gate`), which embeds with the
  ONNX graph also when --classifier_device=cuda scores in PyTorch. Workers then only download
  it: they have no torch."""
  if options.classifier_device == "cuda" and options.classifier_model:
    raise ValueError("--classifier_model is an ONNX file, for --classifier_device=cpu; the "
                     "cuda path runs the committed weights, merged, in PyTorch (the quality "
                     "gate's encoder reads their ONNX export, settled at launch)")
  options.classifier_model = artifacts.settle_model(
      options.classifier_model, pipeline.runner, pipeline.options, options.window,
      options.overlap)
  pipeline.options.view_as(SafetyPretrainingOptions).classifier_model = options.classifier_model
  if options.classifier_device == "cuda":
    from models.classifier.torch_handler import TorchSafetyModelHandler
    return TorchSafetyModelHandler(
        device="cuda", dtype=options.classifier_dtype, max_batch_tokens=options.max_batch_tokens)
  return OnnxSafetyModelHandler(
      model_path=options.classifier_model, device=options.classifier_device,
      intra_op_threads=options.classifier_threads)


def scoring_hints(options: SafetyPretrainingOptions, runner=None) -> dict[str, str]:
  """Beam resource hints for the classifier's steps (Score and every Gate), from the options.

  --classifier_accelerator is refused with --classifier_device=cpu (GPU workers that ONNX
  Runtime on the CPU would leave idle); --classifier_device=cuda on Dataflow needs it (or a
  worker_accelerator for the whole job), since nothing else gives those steps a GPU there."""
  if options.classifier_accelerator:
    if options.classifier_device != "cuda":
      raise ValueError(
          "--classifier_accelerator rents GPU workers for Score and the gates, but "
          "--classifier_device=cpu scores on the worker's CPU and would leave them idle: use "
          "--classifier_device=cuda, or drop --classifier_accelerator")
    return {"accelerator": options.classifier_accelerator}
  if options.classifier_device == "cuda" and type(runner).__name__ == "DataflowRunner":
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    service = options.view_as(GoogleCloudOptions).dataflow_service_options or []
    if not any(option.startswith("worker_accelerator") for option in service):
      raise ValueError(
          "--classifier_device=cuda on Dataflow needs GPU workers for Score and the gates: pass "
          "--classifier_accelerator='type:nvidia-l4;count:1;install-nvidia-driver' (a Beam "
          "resource hint) with the GPU image as --sdk_container_image")
  return {}


def with_scoring_hints(transform: beam.PTransform, options: SafetyPretrainingOptions,
                       runner=None):
  """`transform` with the classifier steps' resource hints, the one place they are applied."""
  hints = scoring_hints(options, runner)
  return transform.with_resource_hints(**hints) if hints else transform


def generator_handler(options: SafetyPretrainingOptions):
  """The generation backend chosen by `--generator` (GENERATORS), built from the options."""
  module, name = GENERATORS[options.generator]
  return getattr(importlib.import_module(module), name).from_options(options)


def generation_hints(options: SafetyPretrainingOptions) -> dict[str, str]:
  """Beam resource hints for the generation steps (GPU workers on Dataflow), from the options."""
  hints = {}
  if options.generation_accelerator:
    gpu_generator = options.generator == "vllm" or (
        options.generator == "local" and options.generator_device != "cpu")
    if not gpu_generator:
      # GPU workers cost many times a CPU worker; a hint that the backend never uses is money
      # spent on idle accelerators (the remote endpoint or the CPU local backend does the work).
      raise ValueError(
          f"--generation_accelerator rents GPU workers, but --generator={options.generator} "
          + ("calls a remote endpoint" if options.generator == "openai"
             else "runs on the worker's CPU (--generator_device=cpu)")
          + " and would leave them idle: use --generator=vllm or --generator_device=cuda (or "
            "auto), or drop --generation_accelerator")
    hints["accelerator"] = options.generation_accelerator
  if options.generation_min_ram:
    hints["min_ram"] = options.generation_min_ram
  return hints


def quality_settings(options: SafetyPretrainingOptions):
  """The quality gate's thresholds from the `--quality_*` options (one per QualitySettings field
  but the generation budget, which is --max_new_tokens)."""
  return QualitySettings(max_new_tokens=options.max_new_tokens, **{
      field: getattr(options, f"quality_{field}") for field in QUALITY_HELP})


def quality_gate(kind: str, options: SafetyPretrainingOptions):
  """The quality gate of one generation kind, from the options; its off_topic check embeds
  with the classifier's ONNX graph at --classifier_model, as `classifier_handler` settled it
  (with --classifier_device=cuda too)."""
  checks = None if options.quality_checks == "all" else [
      name.strip() for name in options.quality_checks.split(",") if name.strip()]
  unknown = sorted(set(checks or ()) - set(CHECKS))
  if unknown:
    raise ValueError(f"--quality_checks: unknown checks {unknown}; expected some of {CHECKS}")
  return QualityGate(
      kind, quality_settings(options), TextEncoder(options.classifier_model, options.window,
                                                   options.overlap),
      enabled=options.quality == "on", checks=checks)


def with_generation_hints(transform: beam.PTransform, options: SafetyPretrainingOptions):
  """`transform` with the generation steps' resource hints, the one place they are applied."""
  hints = generation_hints(options)
  return transform.with_resource_hints(**hints) if hints else transform


def retry_settings(options: SafetyPretrainingOptions) -> dict:
  """The retry bounds of every generation step (the curate branches' and the judge's)."""
  return {"max_attempts": options.max_attempts, "backoff_s": options.retry_backoff_s,
          "max_backoff_s": options.max_backoff_s, "retry_budget_s": options.retry_budget_s}


def generation_step(transform_class, options: SafetyPretrainingOptions, generator):
  """A generation transform with the options' retries, quality gate and resource hints."""
  return with_generation_hints(transform_class(
      generator, options.seed, quality=quality_gate(transform_class.kind, options),
      **retry_settings(options)), options)


def build_annotate(pipeline: beam.Pipeline, options: SafetyPretrainingOptions, staging: str):
  """`--mode=annotate`: read, label with the LLM judge, write labels/ and dead_letter/.

  Returns (written file paths, tallies)."""
  documents = read_documents(pipeline, options)
  generator = generator_handler(options)
  labelled = documents[DOCUMENTS] | "Annotate" >> with_generation_hints(
      Annotate(generator, generator.judge_name, **retry_settings(options)), options)
  dead_letters = ((documents[DEAD_LETTER], labelled[DEAD_LETTER])
                  | "AllDeadLetters" >> beam.Flatten())
  written = [
      labelled[DOCUMENTS] | "WriteLabels" >> WriteJsonLines(
          staging, "labels", options.num_shards, **shard_bounds(options)),
      dead_letters | "WriteDeadLetters" >> WriteDeadLetters(
          staging, options.num_shards, **shard_bounds(options))]
  tallies = [
      documents[DOCUMENTS] | "TallyRead" >> Tallies(run_report.read_tallies),
      documents[MATCHED_FILES] | "TallyMatchedFiles" >> Tallies(
          run_report.matched_file_tallies),
      documents[DOCUMENTS] | "TallyRequests" >> Tallies(
          run_report.request_tallies, STAGE_ANNOTATE),
      labelled[DOCUMENTS] | "TallyLabels" >> Tallies(run_report.label_tallies),
      dead_letters | "TallyDeadLetters" >> Tallies(run_report.dead_letter_tallies)]
  return written, tallies


def shard_bounds(options: SafetyPretrainingOptions) -> dict:
  """The sinks' bounds on a shard for --num_shards=0 (sized from the data)."""
  return {"max_records": options.max_shard_records,
          "max_bytes": int(options.max_shard_mb * 1024 * 1024)}


def read_documents(pipeline: beam.Pipeline, options: SafetyPretrainingOptions):
  return pipeline | "Read" >> ReadDocuments(
      options.input, text_field=options.text_field, id_field=options.id_field,
      url_field=options.url_field, source_field=options.source_field,
      max_chars=options.max_chars, unreadable_files=options.unreadable_files)


def build(pipeline: beam.Pipeline, options: SafetyPretrainingOptions) -> str:
  """Adds the whole method to `pipeline`, reading and writing where the options say, through
  to CommitOutput; returns the run's staging folder (what a failed launch may remove)."""
  staging = staging_path(options.output, options.run_id or new_run_id())
  build_mode = build_annotate if options.mode == run_report.ANNOTATE else build_curate
  written, tallies = build_mode(pipeline, options, staging)
  written_files = written | "AllWrittenFiles" >> beam.Flatten()
  report = (
      tallies
      | "AllTallies" >> beam.Flatten()
      | "RunStatistics" >> run_report.RunStatistics(options.report_sources)
      | "BuildReport" >> beam.Map(
          run_report.build_report, options.max_failure_fraction, options.mode,
          options.allow_empty_input))
  _ = report | "CommitOutput" >> CommitOutput(
      options.output, staging, written_files, options.overwrite, run_report.write_report_files,
      stale_staging_s=options.stale_staging_hours * 3600)
  return staging


def build_curate(pipeline: beam.Pipeline, options: SafetyPretrainingOptions, staging: str):
  """The curation graph, sinks writing under `staging`; returns (written paths, tallies)."""
  dead_letters, written = [], []
  read = read_documents(pipeline, options)
  dead_letters.append(read[DEAD_LETTER])
  # The tag comes only from the tagger: any copy a page carries is removed before scoring.
  documents = read[DOCUMENTS] | "StripInputTags" >> StripTags(STAGE_VALIDATE)
  dead_letters.append(documents[DEAD_LETTER])
  tallies = [
      read[DOCUMENTS] | "TallyStrippedInput" >> Tallies(run_report.stripped_tallies, "input"),
      documents[DOCUMENTS] | "TallyRead" >> Tallies(run_report.read_tallies),
      read[MATCHED_FILES] | "TallyMatchedFiles" >> Tallies(run_report.matched_file_tallies)]

  scorer = classifier_handler(options, pipeline)
  scored = documents[DOCUMENTS] | "Score" >> with_scoring_hints(
      ScoreSafety(scorer, options.window, options.overlap), options, pipeline.runner)
  dead_letters.append(scored[DEAD_LETTER])
  tallies.append(scored[DOCUMENTS] | "TallyScored" >> Tallies(run_report.scored_tallies))

  bands = Bands(
      rephrase=(options.rephrase_min_score, options.rephrase_max_score),
      refuse=(options.refuse_min_score, options.refuse_max_score),
      tag_min_score=options.tag_min_score)
  routed = (
      scored[DOCUMENTS]
      | "Progress" >> LogProgress("scored", options.progress_interval_s)
      | "Route" >> Route(bands))

  outputs = {RAW: routed[RAW]}
  tagged = routed[TO_TAG] | "Tag" >> HarmfulnessTag(
      options.tag_rate, options.tag_min_score, options.seed)
  outputs[TAGGED] = tagged[DOCUMENTS]
  dead_letters.append(tagged[DEAD_LETTER])

  if options.generation == "on":
    generator = generator_handler(options)

    def generate_and_gate(name, branch, transform, inputs, text_of=document_text):
      tallies.append(inputs | f"TallyRequests{name}" >> Tallies(
          run_report.request_tallies, GENERATION_STAGES[branch]))
      generated = inputs | name >> transform
      tallies.append(generated[REVIEWS] | f"TallyQuality{name}" >> Tallies(
          run_report.review_tallies))
      written.append(generated[REVIEWS] | f"QualitySamples{name}" >> WriteQualitySamples(
          staging))
      tallies.append(generated[DOCUMENTS] | f"TallyStripped{name}" >> Tallies(
          run_report.stripped_tallies, branch))
      stripped = generated[DOCUMENTS] | f"StripTags{name}" >> StripTags(
          GENERATION_STAGES[branch])
      gated = stripped[DOCUMENTS] | f"Gate{name}" >> with_scoring_hints(SafetyGate(
          scorer, branch, options.gate_max_score, options.window, options.overlap, text_of),
          options, pipeline.runner)
      dead_letters.extend([generated[DEAD_LETTER], stripped[DEAD_LETTER], gated[DEAD_LETTER]])
      return gated[DOCUMENTS]

    outputs[SAFEWEB] = generate_and_gate(
        "Rephrase", SAFEWEB, generation_step(Rephrase, options, generator), routed[REPHRASE])
    outputs[REFUSEWEB] = generate_and_gate(
        "RefuseWeb", REFUSEWEB, generation_step(RefuseWeb, options, generator),
        routed[REFUSE], text_of=assistant_turns)
    outputs[MORAL_EDUCATION] = generate_and_gate(
        "MoralEducation", MORAL_EDUCATION, generation_step(MoralEducation, options, generator),
        outputs[REFUSEWEB])
  else:
    for branch in GENERATED_BRANCHES:
      outputs[branch] = pipeline | f"No{branch}" >> beam.Create([]).with_output_types(Document)

  for branch in BRANCHES:
    written.append(outputs[branch] | f"Write{branch}" >> WriteDocuments(
        staging, branch, options.num_shards, **shard_bounds(options)))
    tallies.append(outputs[branch] | f"Tally{branch}" >> Tallies(
        run_report.written_tallies, branch))
  all_dead = dead_letters | "AllDeadLetters" >> beam.Flatten()
  written.append(all_dead | "WriteDeadLetters" >> WriteDeadLetters(
      staging, options.num_shards, **shard_bounds(options)))
  tallies.append(all_dead | "TallyDeadLetters" >> Tallies(run_report.dead_letter_tallies))
  return written, tallies
