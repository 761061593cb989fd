"""What a model leaks about its training records, measured: membership inference, canaries, prefix extraction,
synthetic data sampled from a model, the one-run privacy audit (an empirical lower bound on ε) and the
implementation audit of the study's own DP-SGD.

Public API, by module: `audit`, `implementation_audit`, `membership`, `canaries`, `generation`, `extraction`."""
