"""The commands besides `train` (cluster.train): sample, sft, eval, pipeline, compare, data check/synth.
Each module is one command; cluster.cli parses the arguments and calls it."""
