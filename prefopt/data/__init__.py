"""Records in, batches out: reading and checking records (`records`), the attribute schema
of attributed records (`attributes`), tokenisation with the chat template and masks
(`tokenize`), collation (`collate`), the Lightning data modules (`datamodule` for recorded
batches, `prompts` for online RL), the built-in synthetic task (`synthetic`), and safe
writing of result files (`output`).

Names resolve on first use (lazy_loader), so importing one light module (records, say)
does not load Lightning.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "attributes": ["AttributeSchema", "AttributeSpec"],
    "collate": ["collate_groups", "left_padded", "right_padded"],
    "datamodule": ["DataConfig", "PreferenceDataModule", "attribute_schema", "load_splits"],
    "output": ["write_jsonl"],
    "prompts": ["PromptDataModule"],
    "records": ["Record", "RecordError", "read_records"],
    "synthetic": ["SyntheticConfig"],
    "tokenize": ["DataReport", "EncodedGroup", "Encoder", "TokenizeConfig"],
})
