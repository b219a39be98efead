"""Downstream evaluation: does a model trained on generated videos work on real ones?

- `run_classification`: R3D classifier trained on real, synthetic or mixed videos; patient-grouped k-fold CV;
  tested on the real TEST split (accuracy, macro-F1, probability AUC, confusion matrix).
- `run_ef_regression`: EF regressor trained on synthetic videos, tested on real TEST (R², MAE), and the EF
  adherence of the samples judged by a regressor trained on real videos.

Both read prepared datasets and sample folders through one loader (`data.scan_video_folder`) and write
DVC-friendly metrics JSON, CSV and PNG artefacts. Metric math is in `scores` (plain arrays).
"""

from echo_core.downstream.classification import (
    ClassificationConfig,
    ClassificationReport,
    FoldResult,
    classify_records,
    patient_folds,
    run_classification,
)
from echo_core.downstream.data import ClipDataset, LabelMap, VideoRecord, VideoStore, scan_video_folder
from echo_core.downstream.regression import (
    RegressionConfig,
    RegressionReport,
    ef_adherence,
    regress_records,
    run_ef_regression,
)
from echo_core.downstream.scores import classification_metrics, confusion, regression_metrics, roc_auc

__all__ = [
    "ClassificationConfig",
    "ClassificationReport",
    "ClipDataset",
    "FoldResult",
    "LabelMap",
    "RegressionConfig",
    "RegressionReport",
    "VideoRecord",
    "VideoStore",
    "classification_metrics",
    "classify_records",
    "confusion",
    "ef_adherence",
    "patient_folds",
    "regress_records",
    "regression_metrics",
    "roc_auc",
    "run_classification",
    "run_ef_regression",
    "scan_video_folder",
]
