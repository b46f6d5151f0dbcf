"""Dataset preparation: messy uploads in, a clean, captioned, documented training set out.

``prepare.prepare_dataset`` is the flow; ``config.DatasetConfig`` its options; ``items.load_dataset``
what training reads (a prepared folder, a kohya dataset.toml, or a plain image folder);
``augment.augment`` the deterministic training-time augmentation. Import from those modules: this
package imports nothing heavy on its own.
"""
