# shellcheck shell=bash
# GPU runtime settings shared by slurm_multinode.sbatch and single_node.sh. Sourced, never run.
#
# XLA_FLAGS (default below; set GPU_XLA_FLAGS to replace it, or GPU_XLA_FLAGS="" for none):
#   --xla_gpu_enable_latency_hiding_scheduler=true
#       schedules the data-parallel gradient all-reduce (and FSDP all-gathers / reduce-scatters) so that they run
#       while other layers compute, instead of at the end of the step. It is the one flag JAX's GPU performance
#       guide and MaxText both turn on for H100 training and it does not change numerics. We keep to it on
#       purpose: XLA aborts at start-up on a flag it does not know ("Unknown flag in XLA_FLAGS"), and GPU flags
#       come and go between jaxlib releases (--xla_gpu_enable_async_collectives, once recommended, is gone from
#       jaxlib 0.10.2). tests/test_launch.py checks that the pinned jaxlib accepts these flags.
#   Worth measuring on your cluster before adopting (estimates of benefit vary by model and interconnect):
#   --xla_gpu_enable_triton_gemm=false (cuBLAS for every matmul), larger
#   --xla_gpu_all_reduce_combine_threshold_bytes (fewer, larger all-reduces over InfiniBand).
# XLA_PYTHON_CLIENT_MEM_FRACTION (GPU_MEM_FRACTION, default 0.90): JAX preallocates this share of each GPU's memory
#   (its own default is 0.75, which leaves 20 GB of an 80 GB H100 unused). Lower it if something else shares the GPU.

GPU_XLA_FLAGS="${GPU_XLA_FLAGS---xla_gpu_enable_latency_hiding_scheduler=true}"
GPU_MEM_FRACTION="${GPU_MEM_FRACTION:-0.90}"
export XLA_FLAGS="${XLA_FLAGS:+${XLA_FLAGS} }${GPU_XLA_FLAGS}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${GPU_MEM_FRACTION}"
