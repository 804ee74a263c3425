"""The pipeline stages as plain functions: tensors in, a model and metrics out. No Ray in here."""

from cvmf_ray.stages.compare import compare
from cvmf_ray.stages.evaluate import evaluate
from cvmf_ray.stages.quantize import quantize
from cvmf_ray.stages.reestimate import reestimate_batchnorm
from cvmf_ray.stages.train import train
from cvmf_ray.stages.unlearn import unlearn

__all__ = ["train", "unlearn", "reestimate_batchnorm", "quantize", "evaluate", "compare"]
