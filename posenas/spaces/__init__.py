"""Search spaces: one module per method, each with its arch dataclass (the JSON form),
its choice sets, ``derive(arch)`` (a plain ``nn.Module``) and, for one-shot methods, the
weight-sharing supernet. :mod:`posenas.spaces.elastic` holds the elastic layers that
supernets slice; :mod:`posenas.spaces.archfields` the shared arch-JSON validation.
"""
