"""The rates a GPU cluster is sized by: what one GPU trains, and what the input path delivers per
CPU core. No imports: ``plan``, the benches and the bare-machine GPU check (``bench.gpu_core``,
which has no TorchRec) all read them from here."""

# What one GPU consumes: MLPerf Training v4.0, NVIDIA's DLRM-DCNv2 on 8x H200 (per GPU).
H200_SAMPLES_PER_S = 2.1e6
# What the training input path (cafe_dist.train.feed) delivers per CPU core-second: ``cafe-dist bench
# input`` at batch 65,536 on the Criteo-Kaggle profile's 40 columns, step digests on (BENCHMARKS.md
# "Feeding a GPU"). ``plan`` turns it into CPU cores per GPU.
INPUT_ROWS_PER_CORE_S = 2.0e6
