#!/usr/bin/env bash
# Install nbtrack, execute the showcase notebook headless on MLflow's default local store
# (./mlflow.db), and print the resulting leaderboard.
source "$(dirname "$0")/_venv.sh"
python -m pip install -q -e ".[demo]"
nbtrack run notebooks/train_v2_final.ipynb -m val_auc
