"""Typed configuration: pre-training (`pretrain`), evaluation (`evaluation`) and the YAML / `--set` machinery
they share (`loading`). Everything is re-exported here, so `from sdmae.config import Config` is the way in."""
from sdmae.config.evaluation import (DenseConfig, DenseDetConfig, DenseSegConfig, EvalConfig, FinetuneConfig,
                                     load_eval_config)
from sdmae.config.loading import ConfigError, flatten, parse_override, read_yaml_mapping, to_dict
from sdmae.config.pretrain import (DEMO_RECIPE, RECIPES, RESUME_FREE_KEYS, AugConfig, Config, DataConfig,
                                   MethodConfig, ModelConfig, OptimConfig, TrainConfig, ViewsConfig,
                                   diff_training_keys, dump_yaml, load_config, recipe_path, validate)

__all__ = ["AugConfig", "Config", "ConfigError", "DEMO_RECIPE", "DataConfig", "DenseConfig", "DenseDetConfig",
           "DenseSegConfig", "EvalConfig", "FinetuneConfig", "MethodConfig", "ModelConfig", "OptimConfig",
           "RECIPES", "RESUME_FREE_KEYS", "TrainConfig", "ViewsConfig", "diff_training_keys", "dump_yaml",
           "flatten", "load_config", "load_eval_config", "parse_override", "read_yaml_mapping", "recipe_path",
           "to_dict", "validate"]
