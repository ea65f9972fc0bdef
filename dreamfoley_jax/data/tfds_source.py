"""A grain source over a TFDS dataset written by data/build/tfds_dataset.py: its `record` feature is the
training record (records.py), so the trainer reads it exactly as it reads ArrayRecord shards.

  --config.data.train_records='tfds:/data/tfds/dreamfoley_clips/default/1.0.0'   (or ...:SPLIT)
"""
from __future__ import annotations


class TfdsRecordSource:
  """grain RandomAccessDataSource: record bytes by index, from `tfds.builder_from_directory`."""

  def __init__(self, dataset_dir: str, split: str = "train"):
    import tensorflow_datasets as tfds

    self.dataset_dir, self.split = dataset_dir, split
    try:
      self._src = tfds.builder_from_directory(dataset_dir).as_data_source(split=split)
    except Exception as e:
      raise FileNotFoundError(f"tfds:{dataset_dir}: not a TFDS dataset directory with split {split!r} "
                              f"(the folder holding dataset_info.json): {e}") from e

  @classmethod
  def from_spec(cls, spec: str) -> "TfdsRecordSource":
    """'tfds:DIR' or 'tfds:DIR:SPLIT'."""
    body = spec[len("tfds:"):]
    head, sep, tail = body.rpartition(":")
    if sep and head and tail and "/" not in tail:
      return cls(head, tail)
    return cls(body)

  def __len__(self) -> int:
    return len(self._src)

  def __getitem__(self, i):
    return self._src[i]["record"]

  def __getstate__(self):
    return {"dataset_dir": self.dataset_dir, "split": self.split}

  def __setstate__(self, state):
    self.__init__(state["dataset_dir"], state["split"])

  def __repr__(self):
    return f"TfdsRecordSource({self.dataset_dir!r}, {self.split!r})"
