"""Settings: the typed schema with the release defaults, presets, the sources and their provenance
(preset, --config, card, environment, --set), the TOML writer, and the adapter from settings to the
method's typed parameters (``method_params``).

Belongs here: every setting and how it is read. May import ``method`` (its parameter types) and below;
never its siblings ``crf`` and ``evaluation``.
"""
