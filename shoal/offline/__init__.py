"""Offline batch inference: the serving model class over a whole dataset with Ray Data."""

from shoal.offline.pipeline import BatchPredictConfig, batch_predict

__all__ = ["BatchPredictConfig", "batch_predict"]
