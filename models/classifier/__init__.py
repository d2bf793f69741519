"""The safety classifier: a MiniLM encoder with low-rank adapters and a 6-class head.

Scores text 0 (safe) to 5 (highly unsafe) on the scale of the Safety Pretraining paper. Long
documents are scored in windows of the encoder's length; the document takes the maximum.
"""

NUM_CLASSES = 6
