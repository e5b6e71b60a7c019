"""What users run: the command line (``cli``) and what its commands do (compare, report,
export, predict, sweep, ``mtbert.load``, the spec reference). The top floor: may import
every other package."""
