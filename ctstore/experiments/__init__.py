"""Experiments run by ``ctstore run pipelines/*.toml``; each module has ``run(config, ctx) -> Artifact``."""
