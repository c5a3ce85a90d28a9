"""Datasets: folder and labels-CSV sources, checks, decode cache, splits, synthetic lesions. No TensorFlow here.

Modules, in the order data flows through them:
  source          DataSource (a folder or a labels CSV), split and class names, DataError
  labels_csv      read a labels CSV: header to columns, rows to image files (labels_table: what it gives;
                  labels_rows: one data row at a time)
  discovery       what files a source holds, from listings or the CSV (no image read)
  images          one file: read, verify, decode, convert to RGB, perceptual hash, resize
  duplicates      exact and near duplicates (leakage, conflicting labels)
  fingerprinting  content fingerprint, the key of the decoded and pretext caches
  checks          check_dataset and its CheckReport
  cache           load_dataset / check_and_cache: decode once, cached (decoded_store: memory-mapped .npy)
  splits          stratified_split and label_subset (groups kept whole)
  synth           synthetic lesions
  trial_source    a trial's data source and cache folder

The names callers use are importable from here.
"""

from study.data.cache import DecodedData, Split, check_and_cache, default_cache_dir, load_dataset
from study.data.checks import CheckReport, check_dataset
from study.data.fingerprinting import fingerprint
from study.data.source import DataError, DataSource, format_problems
from study.data.splits import label_subset, stratified_split

__all__ = [
    "CheckReport",
    "DataError",
    "DataSource",
    "DecodedData",
    "Split",
    "check_and_cache",
    "check_dataset",
    "default_cache_dir",
    "fingerprint",
    "format_problems",
    "label_subset",
    "load_dataset",
    "stratified_split",
]
