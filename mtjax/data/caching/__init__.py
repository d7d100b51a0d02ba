"""Building the data cache: a plan of units, a ledger of finished ones, workers, hosts.

Data flows one way: `mtjax.data.cache` (the SeqIO bridge: fingerprints, pre-cache ops, the
manifest's SeqIO parts) plans a mixture's splits and hands them to this package, which never
imports it back:

  layout.py    paths, manifests, publishing a finished split folder (first writer wins)
  fast.py      the TF-free path: render + tokenize a block of rows in Python/numpy
  units.py     one unit's output files and the ledger that says which units are finished
  assemble.py  a split's unit outputs -> shards, token arrays, manifest (the one writer of both paths)
  hosts.py     this process's share of the units (flags, JAX / SLURM / TPU environment)
  progress.py  one progress display for the whole build
  run.py       the plan run over N local worker processes, resumable, on many hosts
  beam.py      the same plan as an Apache Beam pipeline (Dataflow, Flink, Spark; the same bytes)

`mtjax.data.staging` (the read side of a remote cache) uses `layout` only.
"""
