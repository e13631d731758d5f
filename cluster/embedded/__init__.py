"""The embedded default: the tiny Qwen2.5-VL-architecture model (spec, build, caption pretraining, the
corpus it is built from) and the synthetic affective-scene data set (the scene painter)."""
