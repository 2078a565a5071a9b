"""Integer PixelSNAIL for coding: the same tables on every CPU, thread count, library version and GPU.

    arithmetic.py  the fixed-point rules (one rounding rule) and the lookup tables, built from
                   exact integer arithmetic: the "arithmetic version" a .snail file names
    network.py     a float PixelSNAIL converted to integers; its full forward pass (the encoder)
                   and its incremental stepper (the decoder), which give identical integers
    mixture.py     the discretized logistic mixture as integer frequency tables (R, G | R, B | R, G)
    kernels.py     the full pass, the step, the counts and the decoder's search, compiled for the
                   CPU (numba): the same integers as the torch code, faster
    runtime.py     what the kernels run on: the threads that share out their rows, and their meetings
"""
