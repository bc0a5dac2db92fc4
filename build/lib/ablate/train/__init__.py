"""The one training recipe: a LightningModule, the optimizer/schedule, and run directories."""
