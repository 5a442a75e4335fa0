import os

# Numba and BLAS threads must not fight on small machines; set before anything imports numba.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
