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

import os

import apache_beam as beam

from beam_pipeline.options import SafetyPretrainingOptions
from models.classifier import artifacts
from models.classifier.handler import OnnxSafetyModelHandler
from transforms.deadletter import DEAD_LETTER
from transforms.documents import DOCUMENTS, STAGE_VALIDATE, Document, ReadDocuments
from transforms.gate import SafetyGate
from transforms.progress import LogProgress
from transforms import report as run_report
from transforms.output_folder import CommitOutput, new_run_id, staging_path
from transforms.records import WriteDeadLetters, WriteDocuments
from transforms.report import BRANCHES, GENERATION_STAGES, Tallies
from transforms.routing import RAW, REFUSE, REPHRASE, TO_TAG, Bands, Route
from transforms.scoring import ScoreSafety, document_text
from transforms.tagging import HarmfulnessTag, StripTags


def classifier_handler(options: SafetyPretrainingOptions, pipeline: beam.Pipeline):
  """The classifier's ModelHandler: ONNX int8 on CPU, or batched PyTorch on a GPU.

  For ONNX, the model is settled here, where the graph is built, as the workers will read it
  (`artifacts.launch_location`: without --classifier_model the default model is built here; a
  local model is staged under a remote temp location for workers on other machines). The result
  is written back to --classifier_model, in `options` and in the pipeline's own copy of them
  (beam.Pipeline deep-copies its options), so the job's recorded options name the model its
  workers read. Workers then only download it: they have no torch."""
  if options.classifier_device == "cuda":
    from models.classifier.torch_handler import TorchSafetyModelHandler
    if options.classifier_model:
      raise ValueError("--classifier_model is an ONNX file, for --classifier_device=cpu; the "
                       "cuda path runs the committed weights, merged, in PyTorch")
    return TorchSafetyModelHandler(
        device="cuda", dtype=options.classifier_dtype, max_batch_tokens=options.max_batch_tokens)
  options.classifier_model = artifacts.launch_location(
      options.classifier_model, pipeline.runner, pipeline.options)
  pipeline.options.view_as(SafetyPretrainingOptions).classifier_model = options.classifier_model
  return OnnxSafetyModelHandler(
      model_path=options.classifier_model, device=options.classifier_device,
      intra_op_threads=options.classifier_threads)


def generator_handler(options: SafetyPretrainingOptions):
  """The generation backend chosen by `--generator`; each is imported only when chosen."""
  if options.generator == "openai":
    from models.generators.openai_endpoint import OpenAIEndpointHandler
    return OpenAIEndpointHandler(
        base_url=options.openai_base_url, model=options.openai_model,
        api_key_env=options.openai_api_key_env, max_in_flight=options.max_in_flight,
        timeout_s=options.request_timeout_s, max_new_tokens=options.max_new_tokens,
        temperature=options.temperature, top_p=options.top_p,
        retry_temperature=options.retry_temperature, prefill=options.openai_prefill)
  if options.generator == "vllm":
    from models.generators.vllm_backend import VllmGeneratorHandler, parse_server_args
    return VllmGeneratorHandler(
        options.vllm_model, max_new_tokens=options.max_new_tokens,
        temperature=options.temperature, top_p=options.top_p,
        retry_temperature=options.retry_temperature,
        repetition_penalty=options.repetition_penalty, timeout_s=options.request_timeout_s,
        server_kwargs=parse_server_args(options.vllm_server_arg),
        chat_template_path=options.vllm_chat_template,
        batch_size=options.generation_batch_size)
  from models.generators.local import LocalGeneratorHandler
  return LocalGeneratorHandler(
      model_path=options.generator_model, cache_dir=options.generator_cache,
      max_new_tokens=options.max_new_tokens, temperature=options.temperature,
      top_p=options.top_p, repetition_penalty=options.repetition_penalty,
      batch_size=options.generation_batch_size,
      torch_threads=options.generator_threads or None, device=options.generator_device,
      retry_temperature=options.retry_temperature)


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
  """The quality gate's thresholds from the `--quality_*` options."""
  from transforms.quality import QualitySettings
  return QualitySettings(
      max_meta_sentences=options.quality_max_meta_sentences,
      max_refusals=options.quality_max_refusals, truncation=options.quality_truncation,
      max_repeated_ngrams=options.quality_max_repeated_ngrams,
      min_length_ratio=options.quality_min_length_ratio, min_words=options.quality_min_words,
      min_topic_similarity=options.quality_min_topic_similarity,
      refusal_parts=options.quality_refusal_parts,
      moral_min_words=options.quality_moral_min_words,
      max_personal_share=options.quality_max_personal_share,
      max_new_tokens=options.max_new_tokens)


def quality_gate(kind: str, options: SafetyPretrainingOptions):
  """The quality gate of one generation kind, from the options; its off_topic check embeds
  with the same classifier graph that scores (`--classifier_model`)."""
  from transforms.quality import CHECKS, QualityGate, TextEncoder
  checks = None if options.quality_checks == "all" else [
      name.strip() for name in options.quality_checks.split(",") if name.strip()]
  unknown = sorted(set(checks or ()) - set(CHECKS))
  if unknown:
    raise ValueError(f"--quality_checks: unknown checks {unknown}; expected some of {CHECKS}")
  return QualityGate(
      kind, quality_settings(options), TextEncoder(options.classifier_model, options.window,
                                                   options.overlap),
      enabled=options.quality == "on", checks=checks)


def generation_step(transform_class, options: SafetyPretrainingOptions, generator):
  """A generation transform with the options' retries, quality gate and resource hints."""
  transform = transform_class(
      generator, options.seed, max_attempts=options.max_attempts,
      backoff_s=options.retry_backoff_s, max_backoff_s=options.max_backoff_s,
      quality=quality_gate(transform_class.kind, options))
  hints = generation_hints(options)
  return transform.with_resource_hints(**hints) if hints else transform


def judge_name(options: SafetyPretrainingOptions) -> str:
  """The judge recorded in each label: the backend and its model."""
  if options.generator == "openai":
    return f"openai:{options.openai_model}"
  if options.generator == "vllm":
    return f"vllm:{options.vllm_model}"
  return f"local:{os.path.basename(options.generator_model or 'SmolLM2-135M-Instruct')}"


def build_annotate(pipeline: beam.Pipeline, options: SafetyPretrainingOptions, staging: str):
  """`--mode=annotate`: read, label with the LLM judge, write labels/ and dead_letter/.

  Returns (written file paths, tallies)."""
  from transforms.annotate import Annotate, label_tallies
  from transforms.records import WriteJsonLines
  documents = read_documents(pipeline, options)
  judge = Annotate(
      generator_handler(options), judge_name(options), max_attempts=options.max_attempts,
      backoff_s=options.retry_backoff_s, max_backoff_s=options.max_backoff_s)
  hints = generation_hints(options)
  labelled = documents[DOCUMENTS] | "Annotate" >> (
      judge.with_resource_hints(**hints) if hints else judge)
  dead_letters = ((documents[DEAD_LETTER], labelled[DEAD_LETTER])
                  | "AllDeadLetters" >> beam.Flatten())
  written = [
      labelled[DOCUMENTS] | "WriteLabels" >> WriteJsonLines(
          staging, "labels", options.num_shards, **shard_bounds(options)),
      dead_letters | "WriteDeadLetters" >> WriteDeadLetters(
          staging, options.num_shards, **shard_bounds(options))]
  tallies = [
      documents[DOCUMENTS] | "TallyRead" >> Tallies(run_report.read_tallies),
      documents[DOCUMENTS] | "TallyRequests" >> Tallies(run_report.request_tallies, "annotate"),
      labelled[DOCUMENTS] | "TallyLabels" >> Tallies(label_tallies),
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
  if options.mode == "annotate":
    from transforms.annotate import build_annotate_report
    written, tallies = build_annotate(pipeline, options, staging)
    make_report = build_annotate_report
  else:
    written, tallies = build_curate(pipeline, options, staging)
    make_report = run_report.build_report
  written_files = written | "AllWrittenFiles" >> beam.Flatten()
  report = (
      tallies
      | "AllTallies" >> beam.Flatten()
      | "RunStatistics" >> run_report.RunStatistics(options.report_sources)
      | "BuildReport" >> beam.Map(make_report, options.max_failure_fraction))
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
      documents[DOCUMENTS] | "TallyRead" >> Tallies(run_report.read_tallies)]

  scorer = classifier_handler(options, pipeline)
  scored = documents[DOCUMENTS] | "Score" >> ScoreSafety(scorer, options.window, options.overlap)
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

  outputs = {"raw": routed[RAW]}
  tagged = routed[TO_TAG] | "Tag" >> HarmfulnessTag(
      options.tag_rate, options.tag_min_score, options.seed)
  outputs["tagged"] = tagged[DOCUMENTS]
  dead_letters.append(tagged[DEAD_LETTER])

  if options.generation == "on":
    from transforms.generation import (
        REVIEWS, MoralEducation, RefuseWeb, Rephrase, assistant_turns)
    from transforms.quality import WriteQualitySamples, review_tallies
    generator = generator_handler(options)

    def generate_and_gate(name, branch, transform, inputs, text_of=document_text):
      tallies.append(inputs | f"TallyRequests{name}" >> Tallies(
          run_report.request_tallies, GENERATION_STAGES[branch]))
      generated = inputs | name >> transform
      tallies.append(generated[REVIEWS] | f"TallyQuality{name}" >> Tallies(review_tallies))
      written.append(generated[REVIEWS] | f"QualitySamples{name}" >> WriteQualitySamples(
          staging))
      tallies.append(generated[DOCUMENTS] | f"TallyStripped{name}" >> Tallies(
          run_report.stripped_tallies, branch))
      stripped = generated[DOCUMENTS] | f"StripTags{name}" >> StripTags(
          GENERATION_STAGES[branch])
      gated = stripped[DOCUMENTS] | f"Gate{name}" >> SafetyGate(
          scorer, branch, options.gate_max_score, options.window, options.overlap, text_of)
      dead_letters.extend([generated[DEAD_LETTER], stripped[DEAD_LETTER], gated[DEAD_LETTER]])
      return gated[DOCUMENTS]

    outputs["safeweb"] = generate_and_gate(
        "Rephrase", "safeweb", generation_step(Rephrase, options, generator), routed[REPHRASE])
    outputs["refuseweb"] = generate_and_gate(
        "RefuseWeb", "refuseweb", generation_step(RefuseWeb, options, generator),
        routed[REFUSE], text_of=assistant_turns)
    outputs["moral_education"] = generate_and_gate(
        "MoralEducation", "moral_education", generation_step(MoralEducation, options, generator),
        outputs["refuseweb"])
  else:
    for branch in ("safeweb", "refuseweb", "moral_education"):
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
