"""ZenML materializers: arrays as .npy, metadata as JSON, models as .keras. Import each from its
module (``materializers.dataset_materializer`` ...): only the Keras one imports TensorFlow."""
