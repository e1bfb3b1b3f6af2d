"""Groups of Gibbs steps: pure kernels that take arrays (and pre-drawn random numbers)."""
