"""Distribution: backends (strategies the loop runs through), clusters from TF_CONFIG, and the
local launcher. Import the submodules; this package itself imports nothing heavy, so the
launcher starts without TensorFlow."""
