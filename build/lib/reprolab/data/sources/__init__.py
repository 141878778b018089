"""Dataset sources, one module each. A source defines:

- ``FILES``: {file name: md5} of the original files it needs,
- ``locate(name) -> Path | None``: where the file lies when no mirror has it
  (a bundled copy, or a download into a cache),
- ``load(raw_dir) -> Arrays``: the original files parsed into arrays.
"""
