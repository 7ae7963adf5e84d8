"""Using a trained model on new images: reading them, batch prediction, Grad-CAM."""
