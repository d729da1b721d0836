"""DeepSeek-OCR 2 behind the Backend interface (``KB_MODEL=deepseek-ocr2``): see backend.py.

``backend.py`` loads a local checkpoint and implements encode / read_page / answer;
``random_init.py`` builds random checkpoints (tiny for tests, full-size for the benchmark).
"""

from kb.model.deepseek_ocr2.backend import DeepseekOcr2Backend

__all__ = ["DeepseekOcr2Backend"]
