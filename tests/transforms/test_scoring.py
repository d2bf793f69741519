"""ScoreSafety: real classifier through RunInference; failed batches go to dead letter."""

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from models.classifier.chunking import Windower
from models.classifier.export import ensure_exported
from models.classifier.handler import OnnxSafetyModelHandler
from corpus.records import DEAD_LETTER, Document
from transforms.scoring import ScoreSafety


class _FailsOnPoison(OnnxSafetyModelHandler):
  """The real handler, made to fail on a batch holding a marked document (failure injection)."""

  def run_inference(self, batch, model, inference_args=None):
    if any(len(windows[0]) == 3 for windows in batch):  # [CLS] "poison" [SEP]
      raise RuntimeError("injected failure")
    return super().run_inference(batch, model, inference_args)


def test_scores_documents_and_dead_letters_failed_batches():
  model_path = ensure_exported()["int8"]
  documents = [
      Document(id="safe", text="We planted tulips in the school garden this spring."),
      Document(id="long", text="The river flows slowly past the old mill. " * 300),
      Document(id="poison", text="poison"),
  ]
  long_windows = len(Windower().windows([documents[1].text])[0])
  assert long_windows > 2
  handler = _FailsOnPoison(model_path, max_batch_size=1)
  with TestPipeline() as p:
    scored = p | beam.Create(documents) | ScoreSafety(handler)
    assert_that(scored["documents"] | beam.Map(lambda d: (d.id, d.safety_score,
                                                          len(d.chunk_scores),
                                                          len(d.safety_probs))),
                equal_to([("safe", 0, 1, 6), ("long", 0, long_windows, 6)]), label="scored")
    assert_that(scored[DEAD_LETTER] | beam.Map(lambda d: (d.id, d.stage, d.reason)),
                equal_to([("poison", "score", "inference_error")]), label="dead")
