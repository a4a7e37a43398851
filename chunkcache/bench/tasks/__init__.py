"""Standard suites offline at scale (`chunkcache bench tasks`): HotpotQA, RULER NIAH and variable tracking,
MuSiQue. suites.py lists them; runner.py runs every mode against full prefill on one; data licences in
chunkcache/data/README.md."""
