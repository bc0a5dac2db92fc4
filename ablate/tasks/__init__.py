"""Tasks: data modules that feed (inputs, labels) batches with -100 where no loss is taken."""
