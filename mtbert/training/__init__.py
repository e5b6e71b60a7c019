"""The training loop (``loop``, top to bottom) and its parts: counters, the meter, the
rollback of skipped steps, a phase's parts, evaluation and the evaluator, the run writer. May
import every layer below (``base`` .. ``runs``)."""
