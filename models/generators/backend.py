"""What every generation backend returns, and the bounded retries around any backend.

A backend is a RunInference ModelHandler from a chat prompt to a `Generation`. It reports a
request that failed (a timeout, an HTTP error, a response that is not a completion) in the
`Generation` of that prompt instead of raising, so one bad request never fails the other prompts
of its batch. `RetryingGenerator` wraps any backend: it checks each reply (for example "is this
a dialogue?") and sends the failed prompts again, with two budgets, since the two kinds of
failure say different things:

- A reply that came back unusable or rejected (empty, not a dialogue, malformed, failing a
  quality check) says the model should try again: it is asked for again at once, up to
  `max_attempts` replies in all. These retries never wait, so the quality gate stays fast.
- An endpoint failure (a timeout, a connection error, HTTP 5xx, 408, 409 or 429) says nothing
  about the prompt: the endpoint is overloaded or restarting. The same request is sent again
  after a wait that grows with jitter (`backoff_seconds`, at most `max_backoff_s`) for as long
  as `retry_budget_s` allows from the prompt's first such failure, so a minute-long restart is
  ridden out. The waits are reported as throttled time (Beam's `ThrottlingSignaler`, the
  `cumulativeThrottlingSeconds` counter that Beam's RemoteModelHandler and its IOs report and
  Dataflow's autoscaler reads), so the runner does not add workers to an endpoint that is
  saturated. Once the endpoint has failed every request for longer than the budget, a batch
  gets one try per prompt until it answers again: an endpoint down for the whole run costs
  one budget per worker thread, not one per batch.

A request the server refused as it is (an HTTP 4xx other than 408, 409 and 429) is final and not
sent again. Beam's RemoteModelHandler is not used: it retries a batch as a whole when any of its
requests raises, so one bad prompt would fail or repeat the others. Every prompt ends with its
last `Generation`, the number of requests sent for it and, if it never succeeded, the reason.
The generation steps turn those into dead letters, so every request ends as an output or a dead
letter with a reason.

Backends read `inference_args["attempt"]` (1, 2, ...), the number of the reply asked for: a retry
of a greedy request after a rejected reply must not send the same request again, so replies
after the first sample with a seed fixed by the prompt and the attempt, which keeps retries
reproducible. A retry after an endpoint failure sends the same attempt again, so an outage does
not change the output.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import random
import time
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence

from apache_beam.io.components.adaptive_throttler import ThrottlingSignaler
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


# How long endpoint failures are retried by default: a restart of up to this minus the longest
# wait (30 s by default) is ridden out, since some try always falls in the last wait's span.
DEFAULT_RETRY_BUDGET_S = 90.0
# The shortest wait after an endpoint failure: with it, a time budget bounds the tries.
MIN_BACKOFF_S = 0.01


def backoff_seconds(previous: float, base: float, cap: float, rng: random.Random) -> float:
  """The wait after an endpoint failure, given the previous wait (0 before the first).

  "Decorrelated jitter" (Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog): a
  uniform draw between `base` and three times the previous wait (`base` before the first), at
  most `cap`. The waits grow about 1.5-fold per try, workers that failed together come back
  spread over the span instead of together, and no wait is shorter than `base`.
  """
  base = max(base, MIN_BACKOFF_S)
  cap = max(cap, base)
  return min(cap, rng.uniform(base, 3 * max(previous, base)))


class Clock:
  """The time and the sleep of RetryingGenerator's waits (a test passes one that only counts)."""

  def time(self) -> float:
    return time.monotonic()

  def sleep(self, seconds: float) -> None:
    time.sleep(seconds)


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
  """Any generation backend, with replies checked and failed prompts retried within bounds
  (the module's docstring says which). Everything else (model loading, batching, metrics
  namespace) is the backend's.

  `check` decides whether a reply is usable at all (a dialogue, valid JSON); `review` (the
  quality gate, transforms/quality.py) then judges a usable reply, may cut it, and rejects it
  with its reason, so a text that fails a quality check is retried like an unusable one. Each
  attempt's review is kept in the final Generation's `quality` (a JSON list). `clock` (time and
  sleep, `Clock`) is what the waits use.
  """

  def __init__(
      self,
      backend: ModelHandler,
      check: Check | None = None,
      max_attempts: int = 3,
      backoff_s: float = 1.0,
      max_backoff_s: float = 30.0,
      stage: str = "generate",
      review: Review | None = None,
      retry_budget_s: float = DEFAULT_RETRY_BUDGET_S,
      clock: Clock | None = None):
    super().__init__()
    if max_attempts < 1:
      raise ValueError("max_attempts must be at least 1")
    self._backend = backend
    self._check = check
    self._max_attempts = max_attempts
    self._backoff_s = backoff_s
    self._max_backoff_s = max_backoff_s
    self._retry_budget_s = max(0.0, retry_budget_s)
    self._stage = stage
    self._review = review
    self._clock = clock or Clock()
    self._reset_worker_state()

  def _reset_worker_state(self) -> None:
    # Made on each worker, never pickled: a random generator of its own (pickled, every worker
    # would draw the same waits), and since when the endpoint has failed every request.
    self._rng: random.Random | None = None
    self._outage_since: float | None = None
    self._throttled_carry = 0.0  # throttled seconds below one, not yet counted

  def __getstate__(self):
    state = self.__dict__.copy()
    state.update(_rng=None, _outage_since=None, _throttled_carry=0.0)
    return state

  @property
  def backend(self) -> ModelHandler:
    return self._backend

  def load_model(self):
    return self._backend.load_model()

  def _judged(self, prompt, result, reviews: list) -> tuple[Generation, str]:
    """A backend result as (its Generation, with error and quality set; the reason it failed,
    "" when it is usable)."""
    generation = as_generation(result.inference)
    reason = generation.error or (self._check(generation.text) if self._check else None)
    if reason:
      reviews.append({"error": reason})
    elif self._review is not None:
      generation, record = self._review(prompt, generation)
      reviews.append(record)
      reason = generation.error
    quality = json.dumps(reviews, sort_keys=True) if self._review else ""
    if reason:
      return generation._replace(error=reason, quality=quality), reason
    return generation._replace(error="", detail="", quality=quality), ""

  def run_inference(
      self,
      batch: Sequence[typing.Any],
      model: typing.Any,
      inference_args: dict[str, typing.Any] | None = None) -> Iterable[PredictionResult]:
    if self._rng is None:
      self._rng = random.Random()
    outcomes: list[Generation | None] = [None] * len(batch)
    reviews: list[list] = [[] for _ in batch]
    sent = [0] * len(batch)  # requests sent per prompt
    replies = [0] * len(batch)  # replies rejected per prompt: the attempt is this plus one
    failing_since: dict[int, float] = {}  # prompt -> when the endpoint first failed it
    pending, wait = list(range(len(batch))), 0.0
    while pending:
      again, failed, answered = [], [], False
      # One call per attempt number: a prompt retried after an endpoint failure sends the same
      # attempt again, one retried after a rejected reply asks for the next.
      for attempt, group in itertools.groupby(sorted(pending, key=lambda i: replies[i]),
                                              key=lambda i: replies[i] + 1):
        group = list(group)
        args = dict(inference_args or {}, **{ATTEMPT: attempt})
        results = list(self._backend.run_inference([batch[i] for i in group], model, args))
        if len(results) != len(group):
          raise RuntimeError(f"backend returned {len(results)} results for {len(group)} prompts")
        for index, result in zip(group, results):
          sent[index] += 1
          generation, reason = self._judged(batch[index], result, reviews[index])
          outcomes[index] = generation._replace(attempts=sent[index])
          if reason:
            Metrics.counter(METRICS_NAMESPACE, f"{self._stage}.attempt_failed.{reason}").inc()
          if reason in TRANSPORT_ERRORS:
            failed.append(index)
            continue
          answered = True  # the endpoint answered, whatever it said
          if reason and reason not in PERMANENT_ERRORS:
            replies[index] += 1
            if replies[index] < self._max_attempts:
              again.append(index)  # retried at once: nothing to wait for
      now = self._clock.time()
      if answered:
        self._outage_since = None
      elif self._outage_since is None:
        self._outage_since = now
      waiting = []
      if failed:
        wait = backoff_seconds(wait, self._backoff_s, self._max_backoff_s, self._rng)
        waiting = [i for i in failed
                   if self._may_retry(failing_since.setdefault(i, now), now + wait)]
      pending = sorted(again + waiting)
      if not pending:
        break
      Metrics.counter(METRICS_NAMESPACE, f"{self._stage}.retries").inc(len(pending))
      if waiting:
        _LOG.warning("The endpoint failed %d of %d generation requests; retrying in %.1f s",
                     len(failed), len(batch), wait)
        self._clock.sleep(wait)
        self._signal_throttled(wait)
    return [PredictionResult(example, outcome) for example, outcome in zip(batch, outcomes)]

  def _may_retry(self, failing_since: float, resume: float) -> bool:
    """Whether a prompt the endpoint has failed since `failing_since` is sent again at
    `resume`: within the budget from its first failure, and from the start of an outage (every
    request failing) that may have begun in an earlier batch."""
    if resume > failing_since + self._retry_budget_s:
      return False
    return self._outage_since is None or resume <= self._outage_since + self._retry_budget_s

  def _signal_throttled(self, seconds: float) -> None:
    """Counts `seconds` of waiting on the endpoint as throttled time, in whole seconds (the
    counter is an integer), carrying the fraction to the next wait: Beam's throttling-time
    counter (`<the backend's metrics namespace>:cumulativeThrottlingSeconds`), incremented
    here, in the bundle's thread, where Beam's metrics container is."""
    self._throttled_carry += seconds
    whole = math.floor(self._throttled_carry)
    if whole:
      ThrottlingSignaler(self.get_metrics_namespace()).signal_throttled(whole)
      self._throttled_carry -= whole

  def validate_inference_args(self, inference_args: dict[str, typing.Any] | None):
    self._backend.validate_inference_args(inference_args)

  def get_num_bytes(self, batch: Sequence[typing.Any]) -> int:
    return self._backend.get_num_bytes(batch)

  def get_metrics_namespace(self) -> str:
    namespace = getattr(self._backend, "get_metrics_namespace", None)
    return namespace() if namespace else super().get_metrics_namespace()

  def get_resource_hints(self) -> dict:
    return self._backend.get_resource_hints()

  def batch_elements_kwargs(self) -> Mapping[str, typing.Any]:
    return self._backend.batch_elements_kwargs()

  def share_model_across_processes(self) -> bool:
    return self._backend.share_model_across_processes()

  def model_copies(self) -> int:
    return self._backend.model_copies()
