"""The Telegram bot (aiogram 3): /txt2img, /train + photos, /avatar, /status, /cancel over the job queue.

``app.run_bot(settings, store, storage, broker)`` runs it; ``settings.load_bot_settings()`` reads
``LORAMILL_TELEGRAM_*``. Nothing is imported here, so ``import loramill`` never loads aiogram.

- ``handlers``  the commands: parse, call ``jobs``, answer at once (never generate inline)
- ``jobs``      submit / list / cancel through the HTTP API's own flows, as the sender's loramill user
- ``albums``    gather the photos of a /train (albums of up to 10, so 5-20 photos may be two albums)
- ``sender``    pacing of every outbound message: 1/s per chat, 30/s overall, honours retry_after
- ``results``   send finished jobs' pictures or errors to the chat that asked, once each
- ``redaction`` keeps the token out of log records
"""
