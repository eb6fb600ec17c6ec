"""Knowledge-distillation losses as plugins (registry kind ``"kd_loss"``), one module each.

A module ``<name>.py`` here is the loss ``<name>`` of a ``stages.distill.methods`` term
(``self_.py`` is ``"self"``); its ``PLUGIN`` is a
:class:`~hamnet.compress.distill.losses.base.DistillLoss` with the term's ``Options`` and
a ``build`` that makes the torch loss. Importing this package (and listing or validating
losses) does not import torch.
"""
