"""`gpt2hub verify` as parts: integrity of the original files, exact weight proofs of every output, the
float64 reference and its measured noise, the consumers, tolerances and judging, tokenization parity, and
the report. gpt2hub/verifying.py runs them in order."""
