"""Speed code for training, which a reader of the algorithms can skip: the CPU kernels chosen by
measurement (:mod:`~lkstn.learned.accel.kernels`) and the fast layers that use them
(:mod:`~lkstn.learned.accel.fast_cpu`), a batch cut into parallel CPU shards
(:mod:`~lkstn.learned.accel.shards`), and a step replayed from a CUDA graph
(:mod:`~lkstn.learned.accel.graphed`). Each computes what the plain PyTorch step computes, to
floating-point rounding (their tests compare the two)."""
