"""What every room shares: the record types and names (`corpus.records`), the TFRecord schema of
what the pipeline writes (`corpus.schema`) and the tf.data reader of it (`corpus.dataset`).

Nothing here imports models/, transforms/ or beam_pipeline/, so each of them may import it.
"""
