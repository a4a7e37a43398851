"""Hot-path ops of the blender. Each module holds a torch reference `<op>_ref` (the CPU path)
and, where a profile asked for it, a Triton kernel behind the same signature."""
