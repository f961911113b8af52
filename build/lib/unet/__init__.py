"""U-Net binary segmentation: model, data, training, evaluation, and MLflow tracking."""
