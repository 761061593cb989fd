"""The study as a whole: the verdicts on the paper's claims from paired intervals, several seeds pooled, the
summary table, the report (results.md and the README's block), the figures and their style, every stage's
parameter checks composed, and the learning rates tuned on an independent draw of the data.

Public API, by module: `verdicts`, `pooling`, `summary`, `report`, `figures`, `plots`, `checks` (`check_params`),
`lr_tuning` (also `python -m ppt_core.study.lr_tuning`)."""
