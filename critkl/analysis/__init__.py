"""Analysis of a pre-trained model: certainty at critical tokens (Table 1, Figure 5), the causal
critical-token map, and detectors of decisive tokens scored against it."""
