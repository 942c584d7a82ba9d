"""Binary and multiclass segmentation with segmentation-models-pytorch."""
