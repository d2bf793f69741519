"""What every generation backend returns, and the bounded retries around any backend.

A backend is a RunInference ModelHandler from a chat prompt to a `Generation`. It reports a
request that failed (a timeout, an HTTP error, a response that is not a completion) in the
`Generation` of that prompt instead of raising, so one bad request never fails the other prompts
of its batch. `RetryingGenerator` wraps any backend: it checks each reply (for example "is this
a dialogue?"), sends the failed and the rejected prompts again, up to `max_attempts` in all, with
exponential backoff after transport errors (a request the server refused as it is, an HTTP 4xx
other than 408, 409 and 429, is final and not sent again), and returns the last `Generation` of each prompt with
its attempt count and, if it never succeeded, the reason. The generation steps turn those into
dead letters, so every request ends as an output or a dead letter with a reason.

Backends read `inference_args["attempt"]` (1, 2, ...): a retry of a greedy request must not send
the same request again, so attempts after the first sample with a seed fixed by the prompt and
the attempt, which keeps retries reproducible.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence

from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from corpus.records import METRICS_NAMESPACE
from models.generators.prompts import chat_messages

# One chat prompt: a sequence of {"role": ..., "content": ...} messages, or of (role, content)
# pairs when it must be hashable. A final "assistant" message is the opening of the reply: the
# backend continues it, and the reply returned starts with it.
Prompt = Sequence[typing.Union[Mapping[str, str], tuple[str, str]]]

# Reasons a backend gives for a request that got no usable reply.
TIMEOUT = "generation_timeout"
HTTP_ERROR = "generation_http_error"  # HTTP 5xx, 408, 409, 429: the server may answer later
# HTTP 4xx other than 408, 409 and 429: the server refused this request as it is (too long for
# the model's context, a field it does not know, a bad key, a wrong model name). Sending it again
# gets the same answer, so it is not retried; its dead letter carries the status.
REQUEST_REJECTED = "generation_request_rejected"
CONNECTION_ERROR = "generation_connection_error"
MALFORMED_RESPONSE = "malformed_response"
EMPTY_GENERATION = "empty_generation"
# After these the endpoint needs a moment: the retry waits (exponential backoff).
TRANSPORT_ERRORS = frozenset({TIMEOUT, HTTP_ERROR, CONNECTION_ERROR})
# These are final: RetryingGenerator does not send the request again.
PERMANENT_ERRORS = frozenset({REQUEST_REJECTED})
# 4xx statuses that say "not now" rather than "not this request".
RETRIED_CLIENT_STATUSES = frozenset({408, 409, 429})


def http_error_reason(status: int) -> str:
  """The reason code of an HTTP error status: REQUEST_REJECTED for a 4xx that a retry would only
  repeat, HTTP_ERROR (retried with backoff) for the rest."""
  if 400 <= status < 500 and status not in RETRIED_CLIENT_STATUSES:
    return REQUEST_REJECTED
  return HTTP_ERROR

# The inference argument that numbers a call's attempt (1, 2, ...); see `split_attempt`.
ATTEMPT = "attempt"

_LOG = logging.getLogger(__name__)


class Generation(typing.NamedTuple):
  """One prompt's outcome: the reply text, or the reason there is none."""
  text: str
  error: str = ""  # "" when `text` is a usable reply; else a reason code (see above)
  detail: str = ""  # what went wrong, for the dead letter (never a credential)
  attempts: int = 1
  status: int = 0  # the HTTP status of a failed request, 0 when there is none
  # How the reply ended: "length" when it stopped at the token limit, "stop" when it ended on
  # its own, "" when the backend cannot say. The quality gate's truncation check reads it.
  finish_reason: str = ""
  # The quality gate's review of each attempt, as a JSON list (RetryingGenerator's `review`).
  quality: str = ""


# A check of a reply: None when it is usable, else the reason code of the rejection.
Check = Callable[[str], typing.Optional[str]]
# A review of a reply that passed the check: (prompt, Generation) -> (the Generation, its text
# possibly cut and its error set when rejected; a JSON-able record of the review).
Review = Callable[[typing.Any, Generation], tuple]


def prompt_seed(prompt: Prompt, attempt: int = 1, bits: int = 63) -> int:
  """A sampling seed fixed by the prompt's text and the attempt, so sampled outputs (retries
  included) are reproducible; `bits` wide (servers take 31-bit seeds)."""
  digest = hashlib.sha256()
  for message in chat_messages(prompt):
    digest.update(f"{message['role']}\0{message['content']}\0".encode("utf-8"))
  return (int.from_bytes(digest.digest()[:8], "big") + attempt - 1) % (2 ** bits)


def split_attempt(
    inference_args: dict[str, typing.Any] | None) -> tuple[int, dict[str, typing.Any]]:
  """(the attempt RetryingGenerator numbered this call, the other inference args)."""
  args = dict(inference_args or {})
  return int(args.pop(ATTEMPT, 1)), args


def as_generation(inference: typing.Any) -> Generation:
  """A backend's inference as a Generation (plain strings are successful replies)."""
  if isinstance(inference, Generation):
    return inference
  if all(hasattr(inference, field) for field in Generation._fields):
    # A Generation that crossed a portable runner's coder as a generated row class.
    return Generation(*(getattr(inference, field) for field in Generation._fields))
  if isinstance(inference, str):
    return Generation(inference)
  return Generation("", MALFORMED_RESPONSE, f"backend returned {type(inference).__name__}")


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
  """The wait before attempt `attempt + 1`: base, 2 base, 4 base, ... at most `cap`."""
  return min(cap, base * (2 ** (attempt - 1)))


def attempt_temperature(temperature: float, retry_temperature: float, attempt: int) -> float:
  """The sampling temperature of an attempt: a greedy request (temperature 0) is retried by
  sampling at `retry_temperature`, since the same greedy request would repeat its reply."""
  return retry_temperature if attempt > 1 and temperature <= 0 else temperature


def sampling_options(options: typing.Any) -> dict[str, typing.Any]:
  """The sampling settings every backend takes, from the pipeline's options (any object with
  these attributes: models never import beam_pipeline)."""
  return {"max_new_tokens": options.max_new_tokens, "temperature": options.temperature,
          "top_p": options.top_p, "retry_temperature": options.retry_temperature}


class ChatBackend(ModelHandler[Prompt, typing.Any, typing.Any]):
  """What the chat backends (local, openai, vllm) share: batches of at most `max_batch_size`
  prompts, sized in bytes of message text, and any request setting accepted as an inference
  argument (it overrides the backend's own).

  Each backend builds itself from the pipeline's options (`from_options`, reading the flags of
  its own option group) and names itself in the labels a judge writes (`judge_name`), so the
  graph (beam_pipeline/pipeline.py) holds only the registry of backends by `--generator`.
  """

  max_batch_size: int = 8

  @classmethod
  def from_options(cls, options: typing.Any) -> "ChatBackend":
    """The backend configured by the pipeline's options (SafetyPretrainingOptions)."""
    raise NotImplementedError

  @property
  def judge_name(self) -> str:
    """`<backend>:<model>`, recorded in each label of an annotate run."""
    raise NotImplementedError

  def validate_inference_args(self, inference_args: dict[str, typing.Any] | None):
    """Any request setting (a `generate` keyword, a chat-completions field) is accepted."""

  def get_num_bytes(self, batch: Sequence[Prompt]) -> int:
    return sum(
        len(m["content"].encode("utf-8")) for prompt in batch for m in chat_messages(prompt))

  def batch_elements_kwargs(self) -> Mapping[str, typing.Any]:
    return {"min_batch_size": 1, "max_batch_size": self.max_batch_size}


def with_retries(backend: ModelHandler, check: "Check | None", stage: str,
                 **settings: typing.Any) -> "RetryingGenerator":
  """`backend` wrapped in a RetryingGenerator with `check` and the `settings` (`review`,
  `max_attempts`, ...); a RetryingGenerator is returned as it is."""
  if isinstance(backend, RetryingGenerator):
    return backend
  return RetryingGenerator(backend, check, stage=stage, **settings)


class RetryingGenerator(ModelHandler[typing.Any, Generation, typing.Any]):
  """Any generation backend, with replies checked and failed prompts retried a bounded number
  of times. Everything else (model loading, batching, metrics namespace) is the backend's.

  `check` decides whether a reply is usable at all (a dialogue, valid JSON); `review` (the
  quality gate, transforms/quality.py) then judges a usable reply, may cut it, and rejects it
  with its reason, so a text that fails a quality check is retried like an unusable one. Each
  attempt's review is kept in the final Generation's `quality` (a JSON list).
  """

  def __init__(
      self,
      backend: ModelHandler,
      check: Check | None = None,
      max_attempts: int = 3,
      backoff_s: float = 1.0,
      max_backoff_s: float = 30.0,
      stage: str = "generate",
      review: Review | None = None):
    super().__init__()
    if max_attempts < 1:
      raise ValueError("max_attempts must be at least 1")
    self._backend = backend
    self._check = check
    self._max_attempts = max_attempts
    self._backoff_s = backoff_s
    self._max_backoff_s = max_backoff_s
    self._stage = stage
    self._review = review

  @property
  def backend(self) -> ModelHandler:
    return self._backend

  def load_model(self):
    return self._backend.load_model()

  def run_inference(
      self,
      batch: Sequence[typing.Any],
      model: typing.Any,
      inference_args: dict[str, typing.Any] | None = None) -> Iterable[PredictionResult]:
    outcomes: list[Generation | None] = [None] * len(batch)
    reviews: list[list] = [[] for _ in batch]
    pending = list(range(len(batch)))
    for attempt in range(1, self._max_attempts + 1):
      args = dict(inference_args or {}, **{ATTEMPT: attempt})
      results = list(self._backend.run_inference([batch[i] for i in pending], model, args))
      if len(results) != len(pending):
        raise RuntimeError(
            f"backend returned {len(results)} results for {len(pending)} prompts")
      failed, transport_failure = [], False
      for index, result in zip(pending, results):
        generation = as_generation(result.inference)
        reason = generation.error or (self._check(generation.text) if self._check else None)
        if reason:
          reviews[index].append({"error": reason})
        elif self._review is not None:
          generation, record = self._review(batch[index], generation)
          reviews[index].append(record)
          reason = generation.error
        quality = json.dumps(reviews[index], sort_keys=True) if self._review else ""
        if reason:
          outcomes[index] = generation._replace(
              error=reason, attempts=attempt, quality=quality)
          Metrics.counter(METRICS_NAMESPACE, f"{self._stage}.attempt_failed.{reason}").inc()
          if reason in PERMANENT_ERRORS:
            continue  # the same request would get the same refusal
          failed.append(index)
          transport_failure |= reason in TRANSPORT_ERRORS
        else:
          outcomes[index] = generation._replace(
              error="", detail="", attempts=attempt, quality=quality)
      pending = failed
      if not pending or attempt == self._max_attempts:
        break
      Metrics.counter(METRICS_NAMESPACE, f"{self._stage}.retries").inc(len(pending))
      if transport_failure:
        wait = backoff_seconds(attempt, self._backoff_s, self._max_backoff_s)
        _LOG.warning("%d of %d generation requests failed (attempt %d); retrying in %.1f s",
                     len(pending), len(batch), attempt, wait)
        time.sleep(wait)
    return [PredictionResult(example, outcome) for example, outcome in zip(batch, outcomes)]

  def validate_inference_args(self, inference_args: dict[str, typing.Any] | None):
    self._backend.validate_inference_args(inference_args)

  def get_num_bytes(self, batch: Sequence[typing.Any]) -> int:
    return self._backend.get_num_bytes(batch)

  def get_metrics_namespace(self) -> str:
    return self._backend.get_metrics_namespace()

  def get_resource_hints(self) -> dict:
    return self._backend.get_resource_hints()

  def batch_elements_kwargs(self) -> Mapping[str, typing.Any]:
    return self._backend.batch_elements_kwargs()

  def share_model_across_processes(self) -> bool:
    return self._backend.share_model_across_processes()

  def model_copies(self) -> int:
    return self._backend.model_copies()
