"""
The evidence, apart from the reading path: it imports mora.py, model.py, train.py and memorize_uuid.py, and none of
them imports it. Run each as a module from the repository root:

    python -m experiments.memorize --help         # UUID memorization over seeds, rates tuned on held-out seeds
    python -m experiments.capacity --help         # what each method holds at a plateau, along the number of pairs
    python -m experiments.many --help             # many UUID runs at once: batched, in worker processes; throughput
    python -m experiments.pretraining --help      # pretraining with adapters: the paper's §5.3 comparison
    python -m experiments.restarts --help         # ReLoRA and ReMoRA: do restarts help, and why
    python -m experiments.corpus                  # the standard library's source: a corpus of code, split by file
    python -m experiments.continual --help        # continual pretraining, prose -> code: adaptation and forgetting
    python -m experiments.bench --quick           # speed and memory of the adapters and of the training step
    python -m experiments.gpu_check               # the GPU path in one command (tests, the GPT-2-small step)
    python -m experiments.worked_example          # the README's worked example and budget table

harness.py holds what the sweeps share: statistics over seeds, rate selection, atomic result files, figures.
"""
