"""The pipeline's stages, one plugin (kind ``"stage"``) per module.

Each public module holds one :class:`~hamnet.pipeline.stages.base.Stage` subclass as
``PLUGIN``; :func:`hamnet.pipeline.plan.build_plan` finds them through the registry.
"""
