"""Controlled experiments on embedding designs.

    config.py    ExperimentConfig: experiment.yaml (designs, base model, train/eval settings, seeds, peers)
    designs.py   the named designs (the paper's five, baselines, NV-Embed's, ours): a registry of configurations
    peers.py     reference rows that are evaluated, never trained (peer models such as all-MiniLM-L6-v2)
    layout.py    ExperimentLayout: the paths of an experiment folder (experiment.yaml, runs/<name>/{train,eval}/...)
    budget.py    measure this machine, estimate an experiment's time, choose steps and seeds for a time budget
    runner.py    run_experiment: train every design, evaluate it and the reference rows, then the report
    study.py     budget and lever studies: several experiment folders and their summary

Import the API from here (`from poolattn.experiment import ExperimentConfig, run_experiment`); the modules import
each other directly, config before runner, so there is no import circle.
"""
from .config import (
           BASELINE,
           EvalSettings,
           ExperimentConfig,
           ReportSettings,
           changed_fields,
           merge_train,
           train_config_for,
)
from .designs import EXTRA_DESIGNS, MEAN_BASELINES, NAMED_DESIGNS, PAPER_DESIGNS, Design, named_design
from .layout import ExperimentLayout
from .runner import claim, evaluate_design, pending, run_experiment, write_config_once

__all__ = ["BASELINE", "EvalSettings", "ExperimentConfig", "ReportSettings", "changed_fields", "merge_train",
           "train_config_for", "EXTRA_DESIGNS", "MEAN_BASELINES", "NAMED_DESIGNS", "PAPER_DESIGNS", "Design",
           "named_design", "ExperimentLayout", "claim", "evaluate_design", "pending", "run_experiment",
           "write_config_once"]
