"""SavedModels for TensorFlow Serving: the export (``saved_model_export``), the contract between it and its
callers (``serving_contract``), the checks before one is loaded (``model_trust``) and the client
(``serving_client``)."""
