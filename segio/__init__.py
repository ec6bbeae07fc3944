"""segio: reading segmentation images and masks, and stable split assignment.

The bottom layer shared by the TFDS builder (``tfds_ph2``) and the library (``kseg``): it imports neither of
them, nor TensorFlow at import time (functions that read through ``tf.io.gfile`` import it when called).
"""
