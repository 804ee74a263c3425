"""Evidence for the project's question: does a model forget, and does the forgetting survive quantization?

Plain functions (torch, numpy, scipy, scikit-learn; no Ray, no file I/O), one module per metric family:

- `mechanism`: from weights alone, how much of the unlearning update the mode's quantizer erases.
- `outputs`: distance to the retrain model in output space (JS, KL) and per-class accuracy vectors.
- `forgetting_quality`: the NeurIPS 2023 unlearning challenge's per-example ε score over the grid's seeds.
- `privacy_score`: the Machine-Unlearning-Comparator's single-model privacy score against retrain.
- `relearn`: fine-tuning steps until forgotten knowledge returns.

`logistic` is the batched one-feature logistic regression the loss attacks share (here and in `privacy`).

Each module's docstring gives its definitions and the published source (paper, reference code at a commit).
"""
