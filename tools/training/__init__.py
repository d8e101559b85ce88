"""Training harness: timm fine-tuning, MLflow logging, Optuna searches, KB builds."""
