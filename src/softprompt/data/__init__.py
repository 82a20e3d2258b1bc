"""Data: reading and validating examples (records, text pairs, CoNLL sentences) and splitting them."""
