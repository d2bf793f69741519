"""Checkpoints of an adapter run, so that a stopped run resumes where it was.

Adapting the encoder on all the labelled data takes hours of a 2-core machine that a session may
lose at any time. So `models.classifier.train --checkpoint_dir DIR` writes, a few times an
epoch, everything the next step depends on: the trained tensors (adapters and head), AdamW's
moments, the learning-rate schedule, the sampler's position (epoch and batch; the batches
themselves follow from the seed) and the random generators' states (dropout). `--resume` loads
the newest one; a resumed run then takes the same steps as one that never stopped.

A checkpoint also records the run's plan (data digest, window count, settings that shape the
steps): resuming with another plan is refused rather than silently mixing two runs.
"""

from __future__ import annotations

import glob
import os
import random
import re

import numpy as np
import torch

PATTERN = "step-{:08d}.pt"


def path_of(directory: str, step: int) -> str:
  return os.path.join(directory, PATTERN.format(step))


def latest(directory: str) -> str | None:
  """The newest checkpoint of `directory` (by step), or None."""
  found = []
  for path in glob.glob(os.path.join(directory, "step-*.pt")):
    match = re.fullmatch(r"step-(\d+)\.pt", os.path.basename(path))
    if match:
      found.append((int(match.group(1)), path))
  return max(found)[1] if found else None


def save(directory: str, step: int, state: dict) -> str:
  """Writes `state` with the random generators' states, atomically (a kill mid-write leaves the
  previous checkpoint the newest)."""
  os.makedirs(directory, exist_ok=True)
  state = dict(state, step=step, rng={
      "torch": torch.get_rng_state(), "python": random.getstate(),
      "numpy": np.random.get_state()})
  path = path_of(directory, step)
  partial = f"{path}.{os.getpid()}.partial"
  torch.save(state, partial)
  os.replace(partial, path)
  return path


def load(path: str, plan: dict) -> dict:
  """A checkpoint's state, its random generators restored; refuses one made with another plan."""
  state = torch.load(path, map_location="cpu", weights_only=False)  # our own file
  saved = state.get("plan", {})
  differ = {k: (saved.get(k), plan.get(k)) for k in set(saved) | set(plan)
            if saved.get(k) != plan.get(k)}
  if differ:
    raise SystemExit(f"{path} was written by a run with other settings; differing "
                     f"(checkpoint, now): {differ}")
  torch.set_rng_state(state["rng"]["torch"])
  random.setstate(state["rng"]["python"])
  np.random.set_state(state["rng"]["numpy"])
  return state
