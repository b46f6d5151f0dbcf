"""The reference world (issue 12): a synthetic domain, a scorer for it, and small models trained on it,
so that "the LoRA learned the concept" is something loramill can measure on a CPU.

API, by module (heavy imports stay inside the functions):

``domain``      coloured shapes on plain backgrounds, 64 px, deterministic per seed
    ``Shape(colour, shape, background="white", texture="solid", x, y, radius)`` and its ``.caption``
    ("a red circle on a white background", "an orange striped star on a black background");
    ``render(spec) -> PIL.Image``; ``specs_for("all" | "base", count, seed)``; ``caption(...)``;
    ``BASE_COLOURS × BASE_SHAPES`` (solid) is what the base denoisers saw; ``NEW_COLOURS`` ("purple"),
    ``NEW_SHAPES`` ("star") and the "striped" texture are held out of them, for LoRAs to learn.
``scorer``      ``score(image) -> Score(valid, reason, colour, shape, background, texture, x, y, radius,
    purity, fit)``; ``Score.matches(spec, fields)``; ``adherence(images, specs, fields) -> float``.
    A validity gate (known clean background, one blob, one colour, a fitting outline) rejects garbage.
``adherence``   ``base_adherence(pipe, family, seeds, steps)``: every base colour × shape per seed, scored;
    ``generate_scored(pipe, family, [(spec, seed)], steps=…)`` → ``[(spec, image, score)]``.
``clip``        a real ``transformers.CLIPModel`` trained on the domain: ``load_clip(folder)``,
    ``load_trained_clip()``, ``image_embeddings(model, processor, images)``,
    ``text_embeddings(model, processor, texts)`` (L2-normalised rows).
``models``      the SD 1.5 / FLUX.1 architectures and the shipped weights: ``write_reference_model(name, dir)``
    writes "sd15", "flux" (diffusers folders, loaded by ``engine.families`` like real ones) or "clip";
    ``load_trained(name)`` returns the pipeline directly. ``loramill models reference NAME DIR`` is the CLI.

Training: ``scripts/train_reference.py`` (``make reference-models``); figures in docs/quality.md.
"""
