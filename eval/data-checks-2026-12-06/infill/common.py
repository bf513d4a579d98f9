import gzip, json, os, re, hashlib, sys
from datasets import load_from_disk
CACHE = os.environ.get("CACHE", "/tmp/rev_i/cache/infill-9b768927e573")
STDLIB = "/root/.pyenv/versions/3.11.7/lib/python3.11"

def load():
    # read the arrow files directly with datasets (not dgft)
    train = load_from_disk(CACHE + "/train") if os.path.exists(CACHE + "/train/dataset_info.json") else None
    held = load_from_disk(CACHE + "/heldout") if os.path.exists(CACHE + "/heldout/dataset_info.json") else None
    return train, held

def norm_lines(text):
    """strip each line, drop blank lines"""
    return [l.strip() for l in text.replace("\r\n", "\n").split("\n") if l.strip()]

def norm_code_lines(text):
    """strip, drop blank and comment-only lines"""
    return [l for l in norm_lines(text) if not l.startswith("#")]

def ws(text):
    return re.sub(r"\s+", " ", text).strip()
