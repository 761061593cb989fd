"""Scoring a model's text: the log-probability it gives each token of a record and held-out perplexity from
it, and BERTScore with the embedded all-MiniLM-L6-v2, offline.

Public API, by module: `evaluation` (`perplexity`, per-token log-probabilities), `bertscore`."""
