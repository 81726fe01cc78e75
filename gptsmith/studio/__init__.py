"""`gptsmith studio`: people write demonstrations and rank responses, the human part of RLHF.

    db.py         the database: SQLite (default) or PostgreSQL, transactions, migrations
    store.py      projects, items, annotators, assignments, answers, drafts, progress
    agreement.py  pairwise agreement and Kendall's tau between two rankings
    prompts.py    prompts read from .jsonl; K responses sampled ahead of time with the engine
    export.py     answers as SFT demonstrations and K-wise rankings (what sft and rm read)
    app.py        the web application: admin and annotator pages, the JSON API, auth, CSRF
"""
