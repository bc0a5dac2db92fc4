"""Tables and plots from run records (run.json files). Never imports model code."""
