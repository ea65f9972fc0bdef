"""Raw videos -> training records on Apache Beam (docs/data.md): standardise, filter, encode, shard."""
