"""Datasets and the trainer every stage that trains (prune, distill, search) builds on."""
