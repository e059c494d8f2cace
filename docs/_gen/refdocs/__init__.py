"""Reference pages of the documentation site, generated from the code at build time: the config
keys from the schema, the rules and attacks from their registries, the models, the CLI from its
parsers. ``pages.generated_pages()`` returns every page as ``{path: markdown}``."""
