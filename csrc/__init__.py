"""C++ and CUDA sources of the fused optimizer kernels, shipped so the JIT build finds them."""
