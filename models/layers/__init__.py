"""Layers the models share: plain functions over tf.Variables owned by tf.Modules."""
