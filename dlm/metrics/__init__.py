"""Evaluation metrics: `result` (MetricResult, EvaluationError), `likelihood` (perplexity, masked-token and
next-token accuracy) and `text` (answer extraction, Self-BLEU, distinct-n, unigram entropy). `dlm.evaluation` runs
them on a dataset."""
