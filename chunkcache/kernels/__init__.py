"""Hot-path ops of the blender. Each module holds a torch reference `<op>_ref` (the CPU path), a Triton
kernel with its launcher `<op>_triton` (same signature) and the dispatcher `<op>` (Triton on CUDA, or when
forced by `use_triton=True` / CHUNKCACHE_KERNELS=triton; triton is imported only then).

rope_shift: re-position cached keys; deviation: per-token KV deviation and top-k selection;
sparse_attention: attention of selected queries over the merged cache; scatter_kv: write fresh K/V in place.
"""
