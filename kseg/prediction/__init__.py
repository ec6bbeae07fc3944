"""Running a trained model on images: loading it from any place kseg stores one (``inference``), and writing
predictions for image files (``image_files``)."""
