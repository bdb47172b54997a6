"""
The evidence, apart from the reading path: it imports mora.py, model.py, train.py and memorize_uuid.py, and none of
them imports it. Run each as a module from the repository root:

    python -m experiments.memorize --help         # UUID memorization over seeds, rates tuned on a held-out seed
    python -m experiments.pretraining --help      # pretraining with adapters: the paper's §5.3 comparison
    python -m experiments.bench --quick           # speed and memory of the adapters and of the training step
    python -m experiments.worked_example          # the README's worked example and budget table

harness.py holds what the sweeps share: statistics over seeds, rate selection, atomic result files, figures.
"""
