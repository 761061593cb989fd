"""Uncertainty and ROC arithmetic, without torch: bootstrap and paired intervals over records, the ROC curve,
its area and the true-positive rate at a low false-positive rate, and the power of a membership test.

Public API, by module: `stats` (intervals), `roc` (`roc_auc`, `roc_curve`, `tpr_at_fpr`), `power` (sample
sizes and what a run of a given size can show)."""
