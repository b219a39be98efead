"""Generative-video metrics: StyleGAN-V's FID / FVD / IS protocol, KID, FID∞, offline fallbacks.

The math (frechet, stats, scores) works on plain arrays; extractors and folder reading sit at the edge.
"""

from echo_core.metrics.api import (
    EXACT_METRIC_NAMES,
    FALLBACK_METRIC_NAMES,
    MetricsConfig,
    MetricsOptions,
    MetricsResult,
    compute_metrics,
    result_name,
)
from echo_core.metrics.extractors import FeatureExtractor, build_extractor
from echo_core.metrics.frechet import frechet_distance, frechet_distance_sqrtm, frechet_distance_with_info
from echo_core.metrics.scores import bootstrap_frechet, fid_infinity, inception_score, kid
from echo_core.metrics.stats import FeatureStore, StreamingMoments

__all__ = [
    "EXACT_METRIC_NAMES", "FALLBACK_METRIC_NAMES", "FeatureExtractor", "FeatureStore", "MetricsConfig",
    "MetricsOptions", "MetricsResult", "StreamingMoments", "bootstrap_frechet", "build_extractor",
    "compute_metrics", "fid_infinity", "frechet_distance", "frechet_distance_sqrtm",
    "frechet_distance_with_info", "inception_score", "kid", "result_name",
]
