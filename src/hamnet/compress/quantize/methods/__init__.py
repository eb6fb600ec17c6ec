"""The quantization methods: each module is one ``quantizer`` plugin, named after it.

Adding a method is one module here exposing ``PLUGIN``, a
:class:`hamnet.compress.quantize.base.QuantizationMethod` subclass; heavy libraries
are imported inside its methods so that listing and config validation stay light.
"""
